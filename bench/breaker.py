"""What a circuit breaker costs an activity call, and what a schedule pass costs a worker.

Cases (one process, durable SQLite, the same run):
  plain      N workflows, each one native activity call, no breaker (the baseline)
  breaker    the same with `circuit_breaker=loom.CircuitBreaker(...)` (closed: one read per
             attempt before it runs, the outcome recorded in the result's transaction)
  schedules  one worker's schedule pass over S due-free schedules (what every worker pays
             each second), median of the passes

Usage: python bench/breaker.py [--workflows 2000] [--reps 3] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import loom
from loom.client import get_store
from loom.scheduler import fire_due


@loom.activity
async def plain(n: int) -> int:
    return n + 1


@loom.activity(circuit_breaker=loom.CircuitBreaker(failures=5, window=60, reset_after=30))
async def guarded(n: int) -> int:
    return n + 1


@loom.workflow(name="Plain")
class Plain(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
    @loom.step
    async def run(self, ctx):  # type: ignore[no-untyped-def]
        ctx.state.n = await ctx.activity(plain, ctx.input["n"])


@loom.workflow(name="Guarded")
class Guarded(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
    @loom.step
    async def run(self, ctx):  # type: ignore[no-untyped-def]
        ctx.state.n = await ctx.activity(guarded, ctx.input["n"])


async def throughput(workflow: type, activity: loom.Activity, count: int, db: Path) -> float:
    loom.configure(database=db)
    async with loom.Worker(workflows=[workflow], activities=[activity], concurrency=200):
        start = time.perf_counter()
        handles = await asyncio.gather(*(workflow.start({"n": i}) for i in range(count)))
        for handle in handles:
            await handle.result(timeout=600)
        elapsed = time.perf_counter() - start
    loom.configure(database=None)
    return count / elapsed


async def schedule_pass(count: int, db: Path) -> float:
    loom.configure(database=db)
    for n in range(count):
        await loom.schedule(f"s{n}", workflow=Plain, cron="0 0 1 1 *", input={"n": n})
    store = get_store()
    passes = []
    for _ in range(50):
        start = time.perf_counter()
        await fire_due(store, {"Plain": Plain.compile()})
        passes.append(time.perf_counter() - start)
    loom.configure(database=None)
    return statistics.median(passes) * 1000


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workflows", type=int, default=2000)
    parser.add_argument("--schedules", type=int, default=100)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rates: dict[str, list[float]] = {"plain": [], "breaker": []}
    with tempfile.TemporaryDirectory() as folder:
        for rep in range(args.reps):  # interleaved, so drift hits both alike
            rates["plain"].append(
                await throughput(Plain, plain, args.workflows, Path(folder) / f"p{rep}.db")
            )
            rates["breaker"].append(
                await throughput(Guarded, guarded, args.workflows, Path(folder) / f"g{rep}.db")
            )
        pass_ms = await schedule_pass(args.schedules, Path(folder) / "s.db")
    figures = {
        "plain_workflows_per_s": statistics.median(rates["plain"]),
        "breaker_workflows_per_s": statistics.median(rates["breaker"]),
        "schedule_pass_ms": pass_ms,
    }
    figures["breaker_ratio"] = figures["breaker_workflows_per_s"] / figures["plain_workflows_per_s"]
    if args.json:
        print(json.dumps(figures))
        return
    print(f"plain      {figures['plain_workflows_per_s']:8.0f} workflows/s (median of {args.reps})")
    print(
        f"breaker    {figures['breaker_workflows_per_s']:8.0f} workflows/s "
        f"(x{figures['breaker_ratio']:.2f} of plain)"
    )
    print(f"schedules  {pass_ms:8.2f} ms per worker pass over {args.schedules} schedules")


if __name__ == "__main__":
    asyncio.run(main())
