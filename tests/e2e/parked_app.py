"""The app of the worker-memory test: each workflow runs one activity, then parks on a signal."""

from __future__ import annotations

import loom


@loom.activity
async def reserve(item: int) -> int:
    return item + 1


@loom.workflow(name="ParkedE2E")
class ParkedE2E(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
    @loom.step
    async def run(self, ctx):  # type: ignore[no-untyped-def]
        ctx.state.item = await ctx.activity(reserve, ctx.input["n"])
        ctx.state.approval = await ctx.wait_for_signal("approve")
