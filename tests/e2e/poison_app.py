"""The app of the poison-pill test: an activity that kills its worker, beside healthy work."""

from __future__ import annotations

import os

import loom
from tests.e2e.app import Arith, add, mul

__all__ = ["Arith", "Poisoned", "add", "crash", "mul"]


@loom.activity(retry=3, timeout=10)
async def crash(n: int) -> int:
    os._exit(1)  # what a segfault or an OOM kill looks like from outside: no cleanup


@loom.workflow(name="Poisoned")
class Poisoned(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
    @loom.step
    async def run(self, ctx):  # type: ignore[no-untyped-def]
        ctx.state.before = await ctx.activity(add, 1, 1)
        ctx.state.after = await ctx.activity(crash, 1)
