"""App for the e2e agent test: ctx.llm with two registered WASM tools."""

from __future__ import annotations

import loom


@loom.workflow(name="ToolAgent")
class ToolAgent(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
    @loom.step
    async def ask(self, ctx):  # type: ignore[no-untyped-def]
        ctx.state.answer = await ctx.llm(
            ctx.input["prompt"], tools=["web-fetch@^1", "word-count@^1"], max_tokens=200
        )
