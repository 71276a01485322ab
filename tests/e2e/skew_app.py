"""The app of the clock-skew tests: a side effect that must run exactly once per call."""

from __future__ import annotations

import asyncio
from pathlib import Path

import loom


@loom.activity(retry=3, timeout=60)
async def side_effect(journal: str, key: str, seconds: float) -> str:
    """Appends one line per execution: a second line for a key is a duplicated effect."""
    with Path(journal).open("a") as out:
        out.write(f"start {key}\n")
    await asyncio.sleep(seconds)
    return key


@loom.workflow(name="SkewOnce")
class SkewOnce(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
    @loom.step
    async def run(self, ctx):  # type: ignore[no-untyped-def]
        ctx.state.done = await ctx.activity(
            side_effect, ctx.input["journal"], ctx.input["key"], ctx.input["seconds"]
        )
