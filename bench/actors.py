"""Durable actors: message throughput and replay cost, against workflows in the same run.

Cases (SQLite file in a temporary folder, one in-process worker):
  workflows         starts N one-step workflows and waits for all (the baseline)
  send/one-key      N sends to one actor, until the last is handled
  send/1000-keys    N sends spread over 1,000 actors (concurrent senders)
  ask/one-key       sequential asks to one actor (round trip)
  ask/1000-keys     concurrent asks over 1,000 actors
  replay/M          cold replay (a fresh worker, nothing cached) of one actor after M
                    messages: must not grow with M (history is compacted every 1,000)

Usage: python bench/actors.py [--messages 3000] [--replay 1000,10000,100000] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import loom


@loom.actor(name="BenchCounter")
class Counter(loom.Actor[dict[str, Any]]):
    @loom.handler
    async def add(self, ctx: loom.WorkflowContext[Any, Any], payload: int) -> int:
        ctx.state["total"] = ctx.state.get("total", 0) + payload
        return int(ctx.state["total"])


@loom.workflow(name="BenchOne")
class One(loom.Workflow[dict[str, Any], dict[str, Any]]):
    @loom.step
    async def go(self, ctx: loom.WorkflowContext[Any, Any]) -> None:
        ctx.state["done"] = True


def _worker(**options: Any) -> loom.Worker:
    return loom.Worker(workflows=[Counter, One], poll_interval=0.05, **options)


async def _workflows(count: int) -> float:
    started = time.perf_counter()
    handles = await asyncio.gather(*(One.start({}) for _ in range(count)))
    await asyncio.gather(*(h.result(timeout=600) for h in handles))
    return count / (time.perf_counter() - started)


async def _sends(count: int, keys: int) -> float:
    started = time.perf_counter()
    if keys == 1:
        for _ in range(count):
            await loom.send(Counter, "one", "add", 1)
        await loom.ask(Counter, "one", "add", 0, timeout=600)
    else:
        batch = [loom.send(Counter, f"k{n % keys}", "add", 1) for n in range(count)]
        await asyncio.gather(*batch)
        await asyncio.gather(
            *(loom.ask(Counter, f"k{n}", "add", 0, timeout=600) for n in range(keys))
        )
    return count / (time.perf_counter() - started)


async def _asks(count: int, keys: int) -> float:
    started = time.perf_counter()
    if keys == 1:
        for _ in range(count):
            await loom.ask(Counter, "asked", "add", 1, timeout=600)
    else:
        await asyncio.gather(
            *(loom.ask(Counter, f"a{n % keys}", "add", 1, timeout=600) for n in range(count))
        )
    return count / (time.perf_counter() - started)


async def _replay(messages: int) -> float:
    """Seconds a fresh worker takes to answer an actor that has handled `messages`."""
    key = f"replay-{messages}"
    async with _worker():
        sent = 0
        while sent < messages:
            chunk = min(1_000, messages - sent)
            await asyncio.gather(*(loom.send(Counter, key, "add", 1) for _ in range(chunk)))
            sent += chunk
            await loom.ask(Counter, key, "add", 0, timeout=600)  # keep the mailbox short
    async with _worker(max_cached_workflows=0):
        started = time.perf_counter()
        total = await loom.ask(Counter, key, "add", 0, timeout=600)
        elapsed = time.perf_counter() - started
    assert total == messages, total
    return elapsed


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=3_000)
    parser.add_argument("--replay", default="1000,10000")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="loom-bench-actors-"))
    loom.configure(database=str(folder / "bench.db"))
    results: dict[str, float] = {}
    async with _worker():
        results["workflows/s"] = await _workflows(args.messages)
        results["send/one-key msg/s"] = await _sends(args.messages, 1)
        results["send/1000-keys msg/s"] = await _sends(args.messages, 1_000)
        results["ask/one-key msg/s"] = await _asks(min(args.messages, 1_000), 1)
        results["ask/1000-keys msg/s"] = await _asks(args.messages, 1_000)
    for size in (int(s) for s in args.replay.split(",") if s):
        results[f"replay/{size} ms"] = 1000 * await _replay(size)
    if args.json:
        print(json.dumps(results))
        return
    baseline = results["workflows/s"]
    for case, value in results.items():
        ratio = f"  ({value / baseline:.2f}x workflows/s)" if case.endswith("msg/s") else ""
        print(f"{case:24} {value:10.1f}{ratio}")


if __name__ == "__main__":
    asyncio.run(main())
