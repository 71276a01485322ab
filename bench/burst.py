"""Cost per workflow as more are started at once: does anything grow with the number waiting?

Cases (one process, durable SQLite, client and worker share it like `async with Worker`):
  raw          a bare sqlite3 loop committing one row per workflow (the floor, same run)
  N=...        N workflows of one activity each, all started at once, every handle awaiting
               `result()`: CPU ms and wall ms per workflow (start -> all results)
  ratio        the largest N over the smallest, CPU per workflow (1.0 = flat)

Usage: python bench/burst.py [--workflows 1000 10000] [--reps 3] [--json]
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


@loom.activity
async def reserve(item: int) -> int:
    return item + 1


@loom.workflow(name="Burst")
class Burst(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
    @loom.step
    async def run(self, ctx):  # type: ignore[no-untyped-def]
        ctx.state.item = await ctx.activity(reserve, ctx.input["n"])


def raw_commit_ms(database: Path, count: int = 2000) -> float:
    conn = sqlite3.connect(database, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE rows (n INTEGER)")
    start = time.perf_counter()
    for i in range(count):
        conn.execute("BEGIN")
        conn.execute("INSERT INTO rows VALUES (?)", (i,))
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    return elapsed * 1000 / count


async def run_case(database: Path, count: int) -> dict[str, float]:
    loom.configure(database=database)
    async with loom.Worker(workflows=[Burst], activities=[reserve], concurrency=500):
        cpu, wall = time.process_time(), time.perf_counter()
        handles = await asyncio.gather(*(Burst.start({"n": i}) for i in range(count)))
        states = await asyncio.gather(*(h.result(timeout=3600) for h in handles))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    loom.configure(database=None)
    assert all(s["item"] == i + 1 for i, s in enumerate(states))
    return {"cpu_ms_per_workflow": cpu * 1000 / count, "wall_ms_per_workflow": wall * 1000 / count}


def median_case(count: int, reps: int) -> dict[str, float]:
    runs = []
    for _ in range(reps):
        with tempfile.TemporaryDirectory() as tmp:
            runs.append(asyncio.run(run_case(Path(tmp) / "loom.db", count)))
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workflows", type=int, nargs="+", default=[1000, 10_000])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    sizes = sorted(args.workflows)
    with tempfile.TemporaryDirectory() as tmp:
        raw = raw_commit_ms(Path(tmp) / "raw.db")
    cases = {count: median_case(count, args.reps) for count in sizes}
    ratio = cases[sizes[-1]]["cpu_ms_per_workflow"] / cases[sizes[0]]["cpu_ms_per_workflow"]
    if args.json:
        print(json.dumps({"raw_commit_ms": raw, "cases": cases, "cpu_ratio": ratio}, indent=2))
        return
    print(f"raw          {raw:7.3f} ms per commit")
    for count, case in cases.items():
        print(
            f"N={count:<7}  cpu {case['cpu_ms_per_workflow']:6.3f} ms/workflow  "
            f"wall {case['wall_ms_per_workflow']:6.3f} ms/workflow"
        )
    print(f"ratio {sizes[-1]}/{sizes[0]}: cpu per workflow {ratio:.2f}x (target <= 1.15)")


if __name__ == "__main__":
    main()
