"""The examples' workflows tested as users test theirs (README "Testing your workflows"):
the `loom_env` fixture, time skipping instead of shortened sleeps, and test doubles instead of
the WebAssembly modules and the LLM."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from examples.llm_stub import StubModel
from examples.loom_core_quiz import QuizWorkflow, grade
from examples.research_agent import AWAITING_APPROVAL, ResearchAgent, ResearchInput
from loom.testing import WorkflowEnvironment

PAGES = {
    "https://example.test/a": ("Alpha", "alpha beta gamma."),
    "https://example.test/b": ("Beta", "delta epsilon."),
}


def fetch(request: dict[str, Any]) -> dict[str, Any]:
    title, text = PAGES[request["url"]]
    return {"url": request["url"], "title": title, "text": text[: request["max_chars"]]}


def count_words(request: dict[str, Any]) -> dict[str, Any]:
    return {"words": len(request["text"].split())}


def chat(request: dict[str, Any]) -> dict[str, Any]:
    """The model, doubled by the stub's own agent policy: fetch each URL, count, answer JSON."""
    tools = [tool["name"] for tool in request.get("tools", [])]
    schema = request.get("response_format", {}).get("json_schema", {}).get("schema")
    turn = StubModel().reply({"messages": request["messages"], "tools": tools, "schema": schema})
    return {
        **turn,
        "model": "fake-llm",
        "finish_reason": "stop",
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
    }


def report(request: dict[str, Any]) -> dict[str, Any]:
    lines = [f"# {request['topic']}", *(f"- {s['summary']}" for s in request["sources"])]
    return {"markdown": "\n".join([*lines, f"approved by {request['reviewer']}"])}


DOUBLES = {"web-fetch": fetch, "word-count": count_words, "openai-chat": chat, "md-report": report}


@pytest.mark.loom(workflows=[ResearchAgent], doubles=DOUBLES)
async def test_research_agent_with_doubles_for_every_module(loom_env: WorkflowEnvironment) -> None:
    handle = await loom_env.start(
        ResearchAgent, ResearchInput(topic="Greek letters", urls=list(PAGES)), workflow_id="r-1"
    )
    await loom_env.sleep(timedelta(minutes=1))  # every activity done: waiting for approval
    assert (await handle.state())["stage"] == AWAITING_APPROVAL
    await handle.signal("approve", approved=True, reviewer="Ada")
    state = await handle.result(timeout=30)
    assert state.stage == "done"
    assert [s["words"] for s in state.sources] == [3, 2]
    # three model calls: fetch both pages, count both, answer
    assert state.usage == {
        "prompt_tokens": 15,
        "completion_tokens": 6,
        "total_tokens": 21,
        "calls": 3,
    }
    assert state.report == (
        "# Greek letters\n- alpha beta gamma.\n- delta epsilon.\napproved by Ada"
    )


@pytest.mark.loom(workflows=[QuizWorkflow], activities=[grade])
async def test_quiz_cooling_off_period_of_two_days_is_skipped(
    loom_env: WorkflowEnvironment,
) -> None:
    started_at = loom_env.now()
    handle = await loom_env.start(QuizWorkflow, {"student": "bo", "answers": ["b", "a", "d", "x"]})
    await loom_env.sleep(timedelta(hours=47))
    assert (await handle.state())["status"] == "draft"  # still cooling off
    await handle.signal("approve", teacher="Ms. Frizzle")
    state = await handle.result(timeout=30)
    assert (state.score, state.approved_by, state.status) == (3, "Ms. Frizzle", "final")
    assert loom_env.now() - started_at >= timedelta(hours=48)
