"""Time skipping in loom.testing.WorkflowEnvironment: wall time of workflows that sleep for days.

Cases (median of --reps, wall seconds):
- env_lifecycle: `async with WorkflowEnvironment(...)` entered and left (temp DB, worker).
- sleep_30_days: one workflow, two activities 30 days apart, start -> result, skipped.
- daily_x30_x20: 20 concurrent workflows, each with 30 one-day timers (600 jumps' worth).
- baseline_zero_sleep: the sleep_30_days workflow with a 0 s sleep on a plain loom.Worker
  (no environment, no skipping): what the same work costs when there is nothing to wait for.

Usage: python bench/time_skipping.py [--reps 5] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path

import loom
from loom.testing import WorkflowEnvironment


@loom.activity
async def note(label: str) -> str:
    return label


@loom.workflow(name="BenchMonthly")
class Monthly(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
    @loom.step
    async def run(self, ctx):  # type: ignore[no-untyped-def]
        ctx.state.first = await ctx.activity(note, "first")
        await ctx.sleep(timedelta(days=ctx.input["days"]))
        ctx.state.second = await ctx.activity(note, "second")


@loom.workflow(name="BenchDaily")
class Daily(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
    @loom.step
    async def run(self, ctx):  # type: ignore[no-untyped-def]
        for day in range(30):
            await ctx.sleep(timedelta(days=1))
            ctx.state.day = day + 1


async def env_lifecycle() -> None:
    async with WorkflowEnvironment(workflows=[Monthly], activities=[note]):
        pass


async def sleep_30_days() -> float:
    async with WorkflowEnvironment(workflows=[Monthly], activities=[note]) as env:
        began = time.perf_counter()
        await (await env.start(Monthly, {"days": 30})).result(timeout=60)
        return time.perf_counter() - began


async def daily_x30_x20() -> float:
    async with WorkflowEnvironment(workflows=[Daily]) as env:
        began = time.perf_counter()
        handles = [await env.start(Daily, {}) for _ in range(20)]
        await asyncio.gather(*(h.result(timeout=120) for h in handles))
        return time.perf_counter() - began


async def baseline_zero_sleep() -> float:
    with tempfile.TemporaryDirectory() as directory:
        database = str(Path(directory) / "loom.db")
        async with loom.Worker([Monthly], [note], database=database, poll_interval=0.05):
            began = time.perf_counter()
            compiled = Monthly.compile()
            from loom.client import discard_store, start_workflow

            handle = await start_workflow(compiled, {"days": 0}, database=database)
            await handle.result(timeout=60)
            elapsed = time.perf_counter() - began
        store = discard_store(database)
        if store is not None:
            await store.close()
        return elapsed


async def _timed(case: Callable[[], Awaitable[float | None]]) -> float:
    began = time.perf_counter()
    measured = await case()
    return measured if measured is not None else time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    cases: dict[str, Callable[[], Awaitable[float | None]]] = {
        "env_lifecycle": env_lifecycle,  # type: ignore[dict-item]  # returns None: timed whole
        "sleep_30_days": sleep_30_days,
        "daily_x30_x20": daily_x30_x20,
        "baseline_zero_sleep": baseline_zero_sleep,
    }
    results = {
        name: [asyncio.run(_timed(case)) for _ in range(args.reps)] for name, case in cases.items()
    }
    medians = {name: statistics.median(times) for name, times in results.items()}
    if args.json:
        print(json.dumps({"median_seconds": medians, "reps": args.reps}))
        return
    base = medians["baseline_zero_sleep"]
    for name, median in medians.items():
        print(f"{name:<22} median {median * 1000:8.1f} ms  ({median / base:5.1f}x baseline)")


if __name__ == "__main__":
    main()
