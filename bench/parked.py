"""Memory of parked workflows: N workflows suspended in one worker's cache.

Cases (one process, durable SQLite):
  baseline   RSS of the process with the worker running and nothing parked
  parked     RSS once N workflows have each run one activity and wait for a signal
             (their coroutines stay live in the worker's cache), and the cost per workflow
  drained    RSS right after all were signalled and completed (the cache lets them go)
  settled    RSS two worker heartbeats later (the worker has given the freed heap back);
             target: <= 1.3x baseline

Each allocator runs in its own interpreter (PYTHONMALLOC is read at start-up): `malloc`, the
C library's, which `loom worker` runs on (see loom/_memory.py), and `pymalloc`, CPython's
default, which a worker embedded in another program gets unless that program is started
with PYTHONMALLOC=malloc.

Usage: python bench/parked.py [--workflows 10000] [--allocator malloc pymalloc] [--json]

At 100,000 on malloc: 57 -> 475 MB parked (4.3 KiB each), 69 MB settled (1.20x); on pymalloc
439 MB parked (3.9 KiB each), 237 MB settled (4.14x): its 1 MiB arenas stay mapped while a
few survivors of the burst are spread over them (see loom/_memory.py).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import loom
from loom.client import get_store

LEASE_SECONDS = 3.0
"""Short leases: the worker heartbeats (and gives memory back) every second."""


@loom.activity
async def reserve(item: int) -> int:
    return item + 1


@loom.workflow(name="Parked")
class Parked(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
    @loom.step
    async def run(self, ctx):  # type: ignore[no-untyped-def]
        ctx.state.item = await ctx.activity(reserve, ctx.input["n"])
        ctx.state.approval = await ctx.wait_for_signal("approve")


def rss_mb() -> float:
    gc.collect()
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def is_parked(count: int) -> bool:
    """All `count` workflows started and waiting, with no task left: two counts in SQL.

    Reading every record (what this check did) went through the store's thread each
    round and starved the worker at 100k workflows.
    """
    stats = await get_store().collect_stats()
    started = count - stats.workflows["PENDING"]
    return started == count and not any(stats.tasks.values())


async def measure(count: int, database: Path) -> dict[str, float]:
    loom.configure(database=database)
    figures: dict[str, float] = {"workflows": count}
    worker = loom.Worker(
        workflows=[Parked], activities=[reserve], concurrency=500, lease_seconds=LEASE_SECONDS
    )
    async with worker:
        figures["baseline_mb"] = rss_mb()
        start = time.perf_counter()
        handles = await asyncio.gather(*(Parked.start({"n": i}) for i in range(count)))
        while not await is_parked(count):
            await asyncio.sleep(0.2)
        figures["park_seconds"] = time.perf_counter() - start
        figures["parked_mb"] = rss_mb()
        await asyncio.gather(*(h.signal("approve", {"ok": True}) for h in handles))
        states = await asyncio.gather(*(h.result(timeout=600) for h in handles))
        assert all(s["approval"] == {"ok": True} for s in states)
        del handles, states
        await asyncio.sleep(0)  # the loop lets go of the callback that woke this one
        figures["drained_mb"] = rss_mb()
        await asyncio.sleep(LEASE_SECONDS * 2 / 3 + 0.5)  # two heartbeats: a figure, not a sync
        figures["settled_mb"] = rss_mb()
    loom.configure(database=None)
    return figures


def measure_in(allocator: str, count: int) -> dict[str, float]:
    """`measure` in a fresh interpreter on `allocator` (what PYTHONMALLOC names)."""
    done = subprocess.run(
        [sys.executable, __file__, "--workflows", str(count), "--in-process"],
        env={**os.environ, "PYTHONMALLOC": allocator},
        check=True,
        capture_output=True,
        text=True,
    )
    figures: dict[str, float] = json.loads(done.stdout)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workflows", type=int, default=10_000)
    parser.add_argument(
        "--allocator", nargs="+", choices=["malloc", "pymalloc"], default=["malloc", "pymalloc"]
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.in_process:
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(asyncio.run(measure(args.workflows, Path(tmp) / "loom.db"))))
        return
    results = {allocator: measure_in(allocator, args.workflows) for allocator in args.allocator}
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for allocator, figures in results.items():
        per = (figures["parked_mb"] - figures["baseline_mb"]) * 1024 / args.workflows
        ratio = figures["settled_mb"] / figures["baseline_mb"]
        print(f"{allocator}:")
        print(f"  baseline  RSS {figures['baseline_mb']:.0f} MB (worker running, nothing parked)")
        print(
            f"  parked    RSS {figures['parked_mb']:.0f} MB with {args.workflows} parked "
            f"workflows ({per:.1f} KiB each; parked in {figures['park_seconds']:.1f} s; "
            "target <= 6 KiB)"
        )
        print(f"  drained   RSS {figures['drained_mb']:.0f} MB after all completed")
        print(
            f"  settled   RSS {figures['settled_mb']:.0f} MB ({ratio:.2f}x baseline; "
            "target <= 1.3x)"
        )


if __name__ == "__main__":
    main()
