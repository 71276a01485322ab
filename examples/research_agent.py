"""Research agent: an LLM that reads pages with a sandboxed fetch tool and counts their words
with a sandboxed counter (one durable `ctx.llm` tool-calling loop), waits for a human's
approval, then writes a report into its state.

Every tool is a registered WebAssembly activity called by name and version range:
`openai-chat@^1` (the model; a C reactor using the `loom` HTTP import under a net grant),
`web-fetch@^1` and `word-count@^1` (the model's tools: the registry gives their descriptions
and input schemas, and each call runs under that module's own grants) and `md-report@^1` (a
Python component). Run a worker for it with `loom worker --app examples.research_agent`;
`examples/demo.py` does everything end to end.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

import loom

AGENT = "Ada"
PERSONA = (
    f"You are {AGENT}, a careful research assistant. Fetch every source with the web-fetch "
    "tool, count its words with the word-count tool, then summarize each source faithfully, "
    "in plain words, in at most two sentences, and never invent facts."
)
APPROVAL_SIGNAL = "approve"
AWAITING_APPROVAL = "awaiting approval"
MODEL_ACTIVITY = "openai-chat@^1"
TOOLS = ["web-fetch@^1", "word-count@^1"]

Context = loom.WorkflowContext["ResearchInput", "ResearchState"]


@dataclass
class ResearchInput:
    topic: str
    urls: list[str]
    llm_endpoint: str | None = None  # default: openai-chat's config (the local stub)
    model: str | None = None


@dataclass
class ResearchState:
    stage: str = "starting"
    pages: list[dict[str, Any]] = field(default_factory=list)  # kept empty (older versions)
    sources: list[dict[str, Any]] = field(default_factory=list)  # url, title, words, summary
    usage: dict[str, int] = field(default_factory=dict)
    approved: bool | None = None
    reviewer: str | None = None
    note: str | None = None
    report: str | None = None


class Source(BaseModel):
    url: str
    title: str
    words: int
    summary: str


class Findings(BaseModel):
    """What the model must answer with (validated; an invalid answer is sent back for repair)."""

    sources: list[Source]


def research_prompt(inputs: ResearchInput) -> list[dict[str, Any]]:
    """The conversation the agent starts from: the persona, then the task and its sources."""
    sources = "\n".join(f"- {url}" for url in inputs.urls)
    task = f"Research '{inputs.topic}' from these sources:\n{sources}"
    return [{"role": "system", "content": PERSONA}, {"role": "user", "content": task}]


def model_params(inputs: ResearchInput) -> dict[str, Any]:
    params: dict[str, Any] = {"max_tokens": 800, "temperature": 0}
    if inputs.llm_endpoint:
        params["endpoint"] = inputs.llm_endpoint
    if inputs.model:
        params["model"] = inputs.model
    return params


@loom.workflow(
    name="ResearchAgent",
    version="2.0.0",
    description="An LLM agent reads and summarizes sources with sandboxed tools; approve; report",
    agent=AGENT,
)
class ResearchAgent(loom.Workflow[ResearchInput, ResearchState]):
    @loom.step(description="researching the sources")
    async def research(self, ctx: Context) -> None:
        ctx.state.stage = "researching"
        findings = await ctx.llm(
            research_prompt(ctx.input),
            activity=MODEL_ACTIVITY,
            tools=TOOLS,
            output=Findings,
            **model_params(ctx.input),
        )
        ctx.state.sources = [source.model_dump() for source in findings.sources]
        ctx.state.usage = ctx.llm_usage
        words = sum(source.words for source in findings.sources)
        ctx.logger.info("researched %d sources, %d words", len(findings.sources), words)

    @loom.step(description="waiting for your approval")
    async def review(self, ctx: Context) -> None:
        ctx.state.stage = AWAITING_APPROVAL
        decision = await ctx.wait_for_signal(APPROVAL_SIGNAL)
        ctx.state.approved = bool(decision.get("approved", True))
        ctx.state.reviewer = str(decision.get("reviewer") or "someone")
        ctx.state.note = decision.get("note")

    @loom.step(description="writing the report")
    async def write(self, ctx: Context) -> None:
        if not ctx.state.approved:
            ctx.state.stage = "rejected"
            return
        ctx.state.stage = "writing"
        request: dict[str, Any] = {
            "topic": ctx.input.topic,
            "agent": AGENT,
            "sources": ctx.state.sources,
            "reviewer": ctx.state.reviewer,
            "usage": {"total_tokens": ctx.state.usage.get("total_tokens", 0)},
        }
        if ctx.state.note:
            request["note"] = ctx.state.note
        rendered = await ctx.activity("md-report@^1", request)
        ctx.state.report = rendered["markdown"]
        ctx.state.stage = "done"
