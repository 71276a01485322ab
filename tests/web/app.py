"""The app the dashboard tests' worker serves: a workflow that waits for a signal."""

from __future__ import annotations

import asyncio

import loom


@loom.activity(retry=3, timeout=10, initial_interval=0.05)
async def greet(name: str) -> str:
    await asyncio.sleep(0.02)
    return f"hello {name}"


@loom.workflow(name="Approval", agent="Robin", description="greets, then waits for approval")
class Approval(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
    @loom.step(description="greeting the customer")
    async def hello(self, ctx):  # type: ignore[no-untyped-def]
        ctx.state.greeting = await ctx.activity(greet, ctx.input["name"])
        ctx.logger.info("greeted %s", ctx.input["name"])

    @loom.step(description="waiting for your approval")
    async def approve(self, ctx):  # type: ignore[no-untyped-def]
        decision = await ctx.wait_for_signal("approve")
        ctx.state.decision = decision

    @loom.step(description="wrapping up")
    async def finish(self, ctx):  # type: ignore[no-untyped-def]
        ctx.state.done = True
