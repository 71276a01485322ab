"""Cost per workflow as more are started at once: does anything grow with the number waiting?

Cases (one process, durable SQLite, client and worker share it like `async with Worker`):
  raw          a bare sqlite3 loop committing one row per workflow (the floor, same run)
  N=...        N workflows of one activity each, all started at once, every handle awaiting
               `result()`: CPU ms and wall ms per workflow (start -> all results), and the
               garbage collector's share (collections by generation, ms, via `gc.callbacks`)
  ratio        the largest N over the smallest, CPU per workflow (1.0 = flat)

Every case runs in a fresh interpreter after a warm-up burst (first-call costs, lazy imports
and the schema would otherwise land on whichever size runs first), and the sizes alternate
round by round so drift on a shared box hits them alike; the median and the spread
(min-max) over `--rounds` are printed, and the ratio's median over the rounds' own ratios.

`--instructions` counts instead what noise cannot move: valgrind's callgrind runs each size
once (and the warm-up alone), and instructions per workflow at N are (I(N) - I(0)) / N, by
thread (event loop: client and worker; store: the SQLite writer). A ratio here is growth in
work; a CPU ratio above it is cache misses or noise. Callgrind runs Python ~50x slower: 10k
takes several minutes (the cases run side by side).

Measured (4 interleaved rounds, this shared 2-core box at load ~10, CPU ms per workflow,
median [min-max]): before the fixes 1k 0.754 [0.639-0.840], 10k 0.930 [0.771-1.055], ratio
1.21x [1.08-1.45]; after 1k 0.783 [0.569-0.803], 10k 0.810 [0.751-0.857], ratio 1.08x
[0.94-1.37]. Instructions per workflow (callgrind, 10k vs 1k): 2.686 vs 2.484 M (1.081x)
before, 2.530 vs 2.482 M (1.019x) after. What grew: asyncio.Semaphore's waiter scans
behind MAX_STARTING (see loom/worker/_slots.py) and young collections over live runs
(GC_OBJECTS_PER_RUN in loom/worker/_heap.py, WorkflowRun.close).

Usage: python bench/burst.py [--workflows 1000 10000] [--rounds 5] [--instructions] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import loom

WARM_UP = 300
"""Workflows run before the measured burst, in the same worker, to pay first-call costs."""


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


class GcMeter:
    """Collections by generation and the time spent in them, from `gc.callbacks`."""

    def __init__(self) -> None:
        self.collections = [0, 0, 0]
        self.seconds_by_generation = [0.0, 0.0, 0.0]
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.seconds_by_generation[info["generation"]] += time.perf_counter() - self._started
            self.collections[info["generation"]] += 1


async def burst(first: int, count: int) -> None:
    handles = await asyncio.gather(*(Burst.start({"n": first + i}) for i in range(count)))
    states = await asyncio.gather(*(h.result(timeout=3600) for h in handles))
    assert all(s["item"] == first + i + 1 for i, s in enumerate(states))


async def run_case(database: Path, count: int) -> dict[str, Any]:
    loom.configure(database=database)
    meter = GcMeter()
    async with loom.Worker(workflows=[Burst], activities=[reserve], concurrency=500):
        await burst(-WARM_UP, WARM_UP)
        gc.collect()
        gc.callbacks.append(meter)
        cpu, wall = time.process_time(), time.perf_counter()
        if count:
            await burst(0, count)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        gc.callbacks.remove(meter)
    loom.configure(database=None)
    per = max(count, 1)
    return {
        "cpu_ms_per_workflow": cpu * 1000 / per,
        "wall_ms_per_workflow": wall * 1000 / per,
        "gc_ms_per_workflow": sum(meter.seconds_by_generation) * 1000 / per,
        "gc_ms_by_generation": [s * 1000 for s in meter.seconds_by_generation],
        "gc_collections": meter.collections,
    }


def case(count: int) -> dict[str, Any]:
    """One case in a fresh interpreter (no heap, caches or freed arenas of another size)."""
    done = subprocess.run(
        [sys.executable, __file__, "--case", str(count)],
        check=True,
        capture_output=True,
        text=True,
    )
    return dict(json.loads(done.stdout))


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):6.3f} [{min(values):.3f}-{max(values):.3f}]"


def timed(sizes: list[int], rounds: int, as_json: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        raw = raw_commit_ms(Path(tmp) / "raw.db")
    runs: dict[int, list[dict[str, Any]]] = {n: [] for n in sizes}
    for round_ in range(rounds):
        # Alternate which size goes first, so a slow stretch of the box hits both.
        for count in sizes if round_ % 2 == 0 else sizes[::-1]:
            runs[count].append(case(count))
    small, large = runs[sizes[0]], runs[sizes[-1]]
    ratios = [
        b["cpu_ms_per_workflow"] / a["cpu_ms_per_workflow"]
        for a, b in zip(small, large, strict=True)
    ]
    if as_json:
        print(json.dumps({"raw_commit_ms": raw, "runs": runs, "cpu_ratios": ratios}, indent=2))
        return
    print(f"raw          {raw:7.3f} ms per commit")
    print(f"{rounds} rounds, median [min-max]; warm-up {WARM_UP} workflows per case")
    for count, cases in runs.items():
        cpu = [c["cpu_ms_per_workflow"] for c in cases]
        wall = [c["wall_ms_per_workflow"] for c in cases]
        gc_ms = [c["gc_ms_per_workflow"] for c in cases]
        collections = [statistics.median(c["gc_collections"][g] for c in cases) for g in range(3)]
        print(
            f"N={count:<7} cpu {spread(cpu)} ms/wf  wall {spread(wall)} ms/wf  "
            f"gc {spread(gc_ms)} ms/wf  collections gen0/1/2 "
            + "/".join(f"{c:g}" for c in collections)
        )
    print(
        f"ratio {sizes[-1]}/{sizes[0]}: cpu per workflow {statistics.median(ratios):.2f}x "
        f"[{min(ratios):.2f}-{max(ratios):.2f}] (target <= 1.15)"
    )


def instructions(sizes: list[int]) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from instructions import thread_totals

    if shutil.which("valgrind") is None:
        raise SystemExit("needs valgrind (apt-get install valgrind)")
    totals: dict[int, dict[int, int]] = {}
    with tempfile.TemporaryDirectory() as workdir:
        # Side by side: an instruction count does not depend on the CPU share each gets.
        running = {
            count: subprocess.Popen(
                [
                    "valgrind",
                    "--tool=callgrind",
                    "--separate-threads=yes",
                    f"--callgrind-out-file={workdir}/cg-{count}",
                    sys.executable,
                    __file__,
                    "--case",
                    str(count),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for count in [0, *sizes]
        }
        for count, process in running.items():
            if process.wait() != 0:
                raise SystemExit(f"callgrind run of {count} workflows failed")
            totals[count] = thread_totals(f"{workdir}/cg-{count}")
    print(f"instructions per workflow, (I(N) - I(0)) / N, callgrind, warm-up {WARM_UP}")
    per: dict[int, float] = {}
    for count in sizes:
        threads = {t: (v - totals[0].get(t, 0)) / count for t, v in totals[count].items()}
        loop = threads.get(1, 0.0)
        store = max((v for t, v in threads.items() if t != 1), default=0.0)
        per[count] = sum(threads.values())
        print(
            f"N={count:<7} event loop {loop / 1e6:.3f} M, store thread {store / 1e6:.3f} M, "
            f"process {per[count] / 1e6:.3f} M"
        )
    ratio = per[sizes[-1]] / per[sizes[0]]
    print(f"ratio {sizes[-1]}/{sizes[0]}: instructions per workflow {ratio:.3f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workflows", type=int, nargs="+", default=[1000, 10_000])
    parser.add_argument("--rounds", "--reps", type=int, default=5)
    parser.add_argument("--instructions", action="store_true", help="count with callgrind")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--case", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case is not None:
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(asyncio.run(run_case(Path(tmp) / "loom.db", args.case))))
        return
    sizes = sorted(args.workflows)
    if args.instructions:
        instructions(sizes)
    else:
        timed(sizes, args.rounds, args.json)


if __name__ == "__main__":
    main()
