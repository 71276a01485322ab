"""The app of the observability e2e tests: a workflow that logs around a signal wait."""

from __future__ import annotations

import logging

import loom

logger = logging.getLogger("tests.observed")


@loom.activity(retry=2, timeout=10, initial_interval=0.05)
async def shout(text: str) -> str:
    logger.info("shouting %s", text)
    return text.upper()


@loom.workflow(name="Observed")
class Observed(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
    @loom.step
    async def talk(self, ctx):  # type: ignore[no-untyped-def]
        ctx.logger.info("before the signal")
        ctx.state.loud = await ctx.activity(shout, ctx.input["text"])
        if ctx.input.get("wait"):
            await ctx.wait_for_signal("go")
            ctx.logger.info("after the signal")
