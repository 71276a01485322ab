"""Cost of agent-style state as it grows: one ~200 B result appended to the state per step.

Cases (one process, durable SQLite, one workflow at a time, each step one activity):
  raw        a bare sqlite3 loop committing one 200 B row per step (the floor, same run)
  steps=S    a workflow of S steps, each `ctx.state.results.append(await ctx.activity(...))`:
             history bytes per step, wall time per step, and the time of the last tenth of
             its steps over the first tenth (1.0 = flat)
  ratio      the largest S over the smallest: bytes per step and time per step (1.0 = flat)

Usage: python bench/state_growth.py [--steps 100 1000] [--reps 3] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import loom

RESULT_BYTES = 200


@loom.activity
async def think(step: int) -> str:
    return f"{step:06d}".ljust(RESULT_BYTES, "x")


@loom.workflow(name="AgentGrowth")
class AgentGrowth(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
    @loom.step
    async def run(self, ctx):  # type: ignore[no-untyped-def]
        ctx.state.results = []
        for i in range(int(ctx.input["steps"])):
            ctx.state.results.append(await ctx.activity(think, i))


def raw_step_seconds(database: Path, steps: int) -> float:
    """Per-step time of the plain baseline: one committed 200 B insert per step."""
    conn = sqlite3.connect(database, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE rows (n INTEGER, body TEXT)")
    start = time.perf_counter()
    for i in range(steps):
        conn.execute("BEGIN")
        conn.execute("INSERT INTO rows VALUES (?, ?)", (i, "x" * RESULT_BYTES))
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    return elapsed / steps


async def run_case(database: Path, steps: int) -> dict[str, float]:
    loom.configure(database=database)
    async with loom.Worker(workflows=[AgentGrowth], activities=[think]):
        handle = await AgentGrowth.start({"steps": steps}, workflow_id="agent")
        start = time.perf_counter()
        state = await handle.result(timeout=3600)
        elapsed = time.perf_counter() - start
    loom.configure(database=None)
    assert len(state["results"]) == steps
    with sqlite3.connect(database) as conn:
        (history,) = conn.execute("SELECT SUM(LENGTH(payload)) FROM events").fetchone()
        done = [
            at
            for (at,) in conn.execute(
                "SELECT created_at FROM events WHERE kind = 'ACTIVITY_COMPLETED' ORDER BY sequence"
            )
        ]
    tenth = max(steps // 10, 1)
    early = done[tenth] - done[0]
    late = done[-1] - done[-1 - tenth]
    return {
        "bytes_per_step": history / steps,
        "ms_per_step": elapsed * 1000 / steps,
        "late_over_early": late / early if early else float("nan"),
    }


def median_case(steps: int, reps: int) -> dict[str, float]:
    runs = []
    for _ in range(reps):
        with tempfile.TemporaryDirectory() as tmp:
            runs.append(asyncio.run(run_case(Path(tmp) / "loom.db", steps)))
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    sizes = sorted(args.steps)
    with tempfile.TemporaryDirectory() as tmp:
        raw_ms = raw_step_seconds(Path(tmp) / "raw.db", max(sizes)) * 1000
    cases = {steps: median_case(steps, args.reps) for steps in sizes}
    small, large = cases[sizes[0]], cases[sizes[-1]]
    ratio = {
        "bytes_per_step": large["bytes_per_step"] / small["bytes_per_step"],
        "ms_per_step": large["ms_per_step"] / small["ms_per_step"],
    }
    if args.json:
        print(json.dumps({"raw_ms_per_step": raw_ms, "cases": cases, "ratio": ratio}, indent=2))
        return
    print(f"raw        {raw_ms:8.3f} ms per committed 200 B row")
    for steps, case in cases.items():
        print(
            f"steps={steps:<5} {case['bytes_per_step']:9.0f} B/step  "
            f"{case['ms_per_step']:7.3f} ms/step ({case['ms_per_step'] / raw_ms:5.1f}x raw)  "
            f"last/first tenth {case['late_over_early']:4.2f}x"
        )
    print(
        f"ratio {sizes[-1]}/{sizes[0]}: bytes/step {ratio['bytes_per_step']:.2f}x  "
        f"time/step {ratio['ms_per_step']:.2f}x"
    )


if __name__ == "__main__":
    main()
