"""App for the e2e WASM test: a workflow calling a registered activity by range."""

from __future__ import annotations

import loom


@loom.workflow(name="WordStats")
class WordStats(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
    @loom.step
    async def count(self, ctx):  # type: ignore[no-untyped-def]
        ctx.state.counts = await ctx.activity("word-count@^1", {"text": ctx.input["text"]})
