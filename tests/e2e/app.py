"""The app the e2e worker subprocesses serve: three activities per workflow."""

from __future__ import annotations

import asyncio

import loom


@loom.activity(retry=5, timeout=10, initial_interval=0.05)
async def add(a: int, b: int) -> int:
    await asyncio.sleep(0.02)
    return a + b


@loom.activity(retry=5, timeout=10, initial_interval=0.05)
async def mul(a: int, b: int) -> int:
    await asyncio.sleep(0.02)
    return a * b


@loom.workflow(name="Arith")
class Arith(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
    @loom.step
    async def compute(self, ctx):  # type: ignore[no-untyped-def]
        n = ctx.input["n"]
        ctx.state.sum = await ctx.activity(add, n, 1)
        ctx.state.product = await ctx.activity(mul, ctx.state.sum, 3)
        ctx.state.final = await ctx.activity(add, ctx.state.product, n)


def expected(n: int) -> dict[str, int]:
    return {"sum": n + 1, "product": (n + 1) * 3, "final": (n + 1) * 3 + n}


@loom.workflow(name="Fanout")
class Fanout(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
    """Parallel activities: results land while the workflow task commits (lock-order race)."""

    @loom.step
    async def spread(self, ctx):  # type: ignore[no-untyped-def]
        n = ctx.input["n"]
        parts = await asyncio.gather(*(ctx.activity(add, n, i) for i in range(4)))
        ctx.state.total = await ctx.activity(add, sum(parts), 0)


@loom.activity(retry=5, timeout=10, initial_interval=0.05)
async def pad(n: int, size: int) -> str:
    return f"{n}:" + "p" * size


@loom.workflow(name="Bulky")
class Bulky(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
    """Waits, then writes large results: its worker needs disk space at a chosen moment."""

    @loom.step
    async def write(self, ctx):  # type: ignore[no-untyped-def]
        n, size = ctx.input["n"], ctx.input["size"]
        await ctx.sleep(ctx.input["delay"])
        ctx.state.first = await ctx.activity(pad, n, size)
        ctx.state.second = await ctx.activity(pad, n + 1, size)
