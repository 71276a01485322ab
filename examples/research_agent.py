"""Research agent: reads pages with a sandboxed fetch tool, summarizes them with a sandboxed LLM
activity (in parallel), waits for a human's approval, then writes a report into its state.

Every tool is a registered WebAssembly activity called by name and version range:
`web-fetch@^1` and `llm-chat@^1` (C reactors using the `loom` HTTP import under net grants),
`word-count@^1` (pure data, C) and `md-report@^1` (a Python component). Run a worker for it with
`loom worker --app examples.research_agent`; `examples/demo.py` does everything end to end.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import loom

AGENT = "Ada"
PERSONA = (
    f"You are {AGENT}, a careful research assistant. You summarize sources faithfully, "
    "in plain words, in at most two sentences, and never invent facts."
)
APPROVAL_SIGNAL = "approve"
AWAITING_APPROVAL = "awaiting approval"
MAX_PAGE_CHARS = 4000

Context = loom.WorkflowContext["ResearchInput", "ResearchState"]


@dataclass
class ResearchInput:
    topic: str
    urls: list[str]
    llm_endpoint: str | None = None  # default: llm-chat's config (the local stub)
    model: str | None = None


@dataclass
class ResearchState:
    stage: str = "starting"
    pages: list[dict[str, Any]] = field(default_factory=list)  # fetched text, dropped at the end
    sources: list[dict[str, Any]] = field(default_factory=list)  # url, title, words, summary
    usage: dict[str, int] = field(default_factory=dict)
    approved: bool | None = None
    reviewer: str | None = None
    note: str | None = None
    report: str | None = None


def summary_request(topic: str, page: dict[str, Any], *, inputs: ResearchInput) -> dict[str, Any]:
    """The llm-chat input for one page: the persona, then the page after a `---` line."""
    prompt = (
        f"Summarize this page for a report on '{topic}'.\n"
        f"Title: {page['title']}\nURL: {page['url']}\n---\n{page['text']}"
    )
    request: dict[str, Any] = {
        "messages": [
            {"role": "system", "content": PERSONA},
            {"role": "user", "content": prompt},
        ],
        "max_tokens": 200,
        "temperature": 0,
    }
    if inputs.llm_endpoint:
        request["endpoint"] = inputs.llm_endpoint
    if inputs.model:
        request["model"] = inputs.model
    return request


@loom.workflow(
    name="ResearchAgent",
    version="1.0.0",
    description="Fetch sources, summarize them with an LLM, get approval, write a report",
    agent=AGENT,
)
class ResearchAgent(loom.Workflow[ResearchInput, ResearchState]):
    @loom.step(description="reading the sources")
    async def read(self, ctx: Context) -> None:
        ctx.state.stage = "reading"
        fetches = [
            ctx.activity("web-fetch@^1", {"url": url, "max_chars": MAX_PAGE_CHARS})
            for url in ctx.input.urls
        ]
        pages = await asyncio.gather(*fetches)
        counts = await asyncio.gather(
            *(ctx.activity("word-count@^1", {"text": page["text"]}) for page in pages)
        )
        ctx.state.pages = [
            {"url": p["url"], "title": p["title"], "text": p["text"], "words": c["words"]}
            for p, c in zip(pages, counts, strict=True)
        ]
        ctx.logger.info("read %d pages, %d words", len(pages), sum(c["words"] for c in counts))

    @loom.step(description="summarizing each source")
    async def summarize(self, ctx: Context) -> None:
        ctx.state.stage = "summarizing"
        pages = ctx.state.pages
        answers = await asyncio.gather(
            *(
                ctx.activity("llm-chat@^1", summary_request(ctx.input.topic, p, inputs=ctx.input))
                for p in pages
            )
        )
        ctx.state.sources = [
            {"url": p["url"], "title": p["title"], "words": p["words"], "summary": a["content"]}
            for p, a in zip(pages, answers, strict=True)
        ]
        ctx.state.usage = {
            "total_tokens": sum(a["usage"]["total_tokens"] for a in answers),
            "calls": len(answers),
        }
        ctx.logger.info("summarized with %s", answers[0]["model"] if answers else "no model")

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
            ctx.state.pages = []
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
        ctx.state.pages = []
        ctx.state.stage = "done"
