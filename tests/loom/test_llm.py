"""`ctx.llm` against the stub model over both wire formats, with real WASM tools and workers:
tool calls validated and run once under their grants, errors returned to the model, structured
output repaired or refused, and tokens summed per workflow."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from pydantic import BaseModel

import loom
import loom.testing
from activity_registry import Registry
from examples.build import build_example
from examples.demo import manifest_for
from examples.llm_stub import PAGES, StubServers
from loom.cli import main as cli
from loom.client import get_store
from loom.history import EventKind
from loom.web.app import create_app

pytestmark = pytest.mark.timeout(300)  # the first test builds the modules

API_KEY = "sk-test-agent-key"
PROVIDERS = ["openai-chat@^1", "anthropic-chat@^1"]


class Count(BaseModel):
    words: int
    note: str


@loom.activity
async def shout(text: str) -> str:
    """Upper-cases a text."""
    return text.upper()


@loom.workflow(name="AskAgent")
class AskAgent(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
    @loom.step
    async def ask(self, ctx):  # type: ignore[no-untyped-def]
        options = ctx.input
        tools = [shout if t == "shout" else t for t in options.get("tools", [])]
        output = Count if options.get("structured") else None
        answer = await ctx.llm(
            options["prompt"],
            activity=options["model"],
            tools=tools,
            output=output,
            repair_attempts=options.get("repairs", 2),
            max_turns=options.get("max_turns", 8),
            max_tokens=300,
        )
        ctx.state.answer = answer.model_dump() if output else answer


@pytest.fixture
def servers(monkeypatch: pytest.MonkeyPatch) -> Iterator[StubServers]:
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    monkeypatch.setenv("ANTHROPIC_API_KEY", API_KEY)
    with StubServers(llm_port=0, page_port=0, api_key=API_KEY, script=[]) as stubs:
        yield stubs


@pytest.fixture
async def registered(db_path: Any, servers: StubServers, tmp_path: Path) -> StubServers:
    nets = {
        "openai-chat": f"http://127.0.0.1:{servers.llm_port}",
        "anthropic-chat": f"http://127.0.0.1:{servers.llm_port}",
        "web-fetch": f"http://127.0.0.1:{servers.page_port}",
    }
    async with Registry(db_path) as registry:
        for name in ["openai-chat", "anthropic-chat", "web-fetch", "word-count"]:
            build_example(name)
            manifest = manifest_for(name, nets.get(name), tmp_path / "stage")
            await registry.register(manifest, approve_grants=True)
    return servers


def call(name: str, **arguments: Any) -> dict[str, Any]:
    return {"name": name, "arguments": json.dumps(arguments)}


async def completed(workflow_id: str, name: str) -> list[dict[str, Any]]:
    events = await get_store().list_events(workflow_id)
    return [
        e.payload
        for e in events
        if e.kind is EventKind.ACTIVITY_COMPLETED and e.payload["name"] == name
    ]


def tool_messages(request: dict[str, Any]) -> list[str]:
    """The tool results a request carried, in either wire format."""
    found = [m["content"] for m in request["messages"] if m.get("role") == "tool"]
    for turn in request["messages"]:
        if isinstance(turn.get("content"), list):
            found += [b["content"] for b in turn["content"] if b.get("type") == "tool_result"]
    return found


@pytest.mark.parametrize("model", PROVIDERS)
async def test_model_calls_a_tool_gets_its_result_and_answers(
    model: str, registered: StubServers, make_worker: Any
) -> None:
    page = registered.page_url("wasm-sandboxing")
    registered.model.script = [
        {"tool_calls": [call("web-fetch", url=page, max_chars=500)]},
        {"content": "It is about sandboxes."},
    ]
    async with make_worker([AskAgent]):
        handle = await AskAgent.start(
            {"model": model, "prompt": f"Read {page}", "tools": ["web-fetch@^1"]}
        )
        assert await handle.result(timeout=60) == {"answer": "It is about sandboxes."}
    fetched = await completed(handle.workflow_id, "web-fetch@^1")
    assert len(fetched) == 1  # the tool ran once ...
    assert fetched[0]["result"]["title"] == PAGES["wasm-sandboxing"][0]
    assert fetched[0]["pin"]["version"] == "1.0.0"  # ... as the registered WASM module
    assert registered.requests == {"llm:ok": 2, "pages:ok": 1}  # under its net grant
    first, second = registered.received
    offered = first["tools"][0]
    definition = offered.get("function", offered)  # OpenAI nests it, Anthropic does not
    assert definition["name"] == "web-fetch"
    assert "url" in (definition.get("parameters") or definition["input_schema"])["properties"]
    (result,) = tool_messages(second)
    assert json.loads(result)["title"] == PAGES["wasm-sandboxing"][0]


@pytest.mark.parametrize("model", PROVIDERS)
async def test_bad_arguments_reach_the_model_as_the_tools_error(
    model: str, registered: StubServers, make_worker: Any
) -> None:
    registered.model.script = [
        {"tool_calls": [call("word-count", txt="one two")]},  # `text` is required
        {"tool_calls": [call("web-fetch", url="http://example.com/")]},  # outside its grant
        {"tool_calls": [call("word-count", text="one two three"), call("shout", text="hi")]},
        {"content": "three words"},
    ]
    async with make_worker([AskAgent], [shout]):
        handle = await AskAgent.start(
            {
                "model": model,
                "prompt": "count",
                "tools": ["word-count@^1", "web-fetch@^1", "shout"],
            }
        )
        assert await handle.result(timeout=60) == {"answer": "three words"}
    bad_args = tool_messages(registered.received[1])
    assert len(bad_args) == 1 and "'text' is a required property" in bad_args[0]
    denied = tool_messages(registered.received[2])[-1]
    assert "CapabilityDenied" in denied and "example.com" in denied
    counts = await completed(handle.workflow_id, "word-count@^1")
    assert [c["result"]["words"] for c in counts] == [3]  # never run with the bad arguments
    assert [r["result"] for r in await completed(handle.workflow_id, "shout")] == ["HI"]
    assert registered.requests.get("pages:ok") is None


@pytest.mark.parametrize("model", PROVIDERS)
async def test_invalid_structured_output_is_repaired(
    model: str, registered: StubServers, make_worker: Any
) -> None:
    registered.model.script = [
        {"content": "Sure! Three words."},
        {"content": '{"words": "three", "note": "x"}'},
        {"content": '```json\n{"words": 3, "note": "fixed"}\n```'},
    ]
    async with make_worker([AskAgent]):
        handle = await AskAgent.start({"model": model, "prompt": "count", "structured": True})
        assert await handle.result(timeout=60) == {"answer": {"words": 3, "note": "fixed"}}
    assert len(registered.received) == 3
    repair = registered.received[2]
    asked = json.dumps(repair)
    assert "does not match the required JSON Schema" in asked and "words" in asked
    if model.startswith("openai"):
        assert repair["response_format"]["json_schema"]["schema"]["required"] == ["words", "note"]
    else:
        assert "JSON Schema" in repair["system"]


async def test_output_still_invalid_after_repairs_raises_llm_output_error(
    registered: StubServers, make_worker: Any
) -> None:
    registered.model.script = [{"content": "no JSON here"}]
    async with make_worker([AskAgent]):
        handle = await AskAgent.start(
            {"model": PROVIDERS[0], "prompt": "count", "structured": True, "repairs": 1}
        )
        with pytest.raises(loom.WorkflowExecutionError) as caught:
            await handle.result(timeout=60)
    assert caught.value.error_type == "LLMOutputError"
    assert caught.value.details["content"] == "no JSON here"
    assert caught.value.details["turns"] == 2  # the first answer and one repair
    assert len(registered.received) == 2


async def test_usage_is_recorded_per_call_and_summed_per_workflow(
    registered: StubServers, make_worker: Any, db_path: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"loom-stub": {"input": 1.0, "output": 2.0}}))
    monkeypatch.setenv("LOOM_PRICES", str(prices))
    registered.model.script = [
        {"tool_calls": [call("word-count", text="a b c d")]},
        {"content": "four words, I counted them"},
    ]
    async with make_worker([AskAgent]):
        handle = await AskAgent.start(
            {"model": PROVIDERS[0], "prompt": "count a b c d", "tools": ["word-count@^1"]}
        )
        await handle.result(timeout=60)
    calls = await completed(handle.workflow_id, PROVIDERS[0])
    assert len(calls) == 2
    prompt = sum(c["result"]["usage"]["prompt_tokens"] for c in calls)
    completion = sum(c["result"]["usage"]["completion_tokens"] for c in calls)
    assert prompt > 0 and completion > 0
    for c in calls:  # each call's own record, priced when it completed
        usage = c["result"]["usage"]
        assert c["llm_usage"]["total_tokens"] == usage["total_tokens"]
        expected = (usage["prompt_tokens"] * 1.0 + usage["completion_tokens"] * 2.0) / 1e6
        assert c["llm_usage"]["cost"] == pytest.approx(expected)
    assert "llm_usage" not in (await completed(handle.workflow_id, "word-count@^1"))[0]
    command = ["inspect", handle.workflow_id, "--json", "--db", str(db_path)]
    out = await asyncio.to_thread(CliRunner().invoke, cli, command)  # the CLI runs its own loop
    assert out.exit_code == 0, out.output
    usage = json.loads(out.output)["usage"]
    assert usage["prompt_tokens"] == prompt
    assert usage["completion_tokens"] == completion
    assert usage["total_tokens"] == prompt + completion
    assert usage["calls"] == 2
    assert usage["cost"] == pytest.approx((prompt * 1.0 + completion * 2.0) / 1e6)
    assert usage["models"]["loom-stub-1"]["calls"] == 2
    command = ["inspect", handle.workflow_id, "--db", str(db_path)]
    shown = await asyncio.to_thread(CliRunner().invoke, cli, command)
    assert (
        f"{prompt + completion} tokens ({prompt} prompt, {completion} completion)" in shown.output
    )


async def test_dashboard_shows_usage_and_metrics_count_tokens(
    registered: StubServers, make_worker: Any, db_path: Any
) -> None:
    registered.model.script = [{"content": "hello"}]
    async with make_worker([AskAgent]):
        handles = [
            await AskAgent.start({"model": model, "prompt": "say hello"}) for model in PROVIDERS
        ]
        for handle in handles:
            await handle.result(timeout=60)
    app = create_app(database=str(db_path))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        detail = (await client.get(f"/api/workflows/{handles[0].workflow_id}")).json()
        page = (await client.get(f"/workflows/{handles[0].workflow_id}")).text
        metrics = (await client.get("/metrics")).text
    tokens = detail["usage"]["total_tokens"]
    assert tokens > 0 and detail["usage"]["calls"] == 1
    assert f"{tokens} tokens" in page and "loom-stub-1" in page
    lines = set(metrics.splitlines())
    for model, used in [("loom-stub-1", detail["usage"]), ("loom-stub-claude", None)]:
        prompt = [line for line in lines if f'model="{model}",kind="prompt"' in line]
        assert len(prompt) == 1, metrics
        if used is not None:
            assert prompt[0].endswith(f" {used['prompt_tokens']}")
            assert (
                f'loom_llm_tokens_total{{model="{model}",kind="completion"}} '
                + str(used["completion_tokens"])
                in lines
            )


async def test_a_model_that_never_stops_calling_tools_ends_at_max_turns(
    registered: StubServers, make_worker: Any
) -> None:
    registered.model.script = [{"tool_calls": [call("no-such-tool", x=1)]}]
    async with make_worker([AskAgent]):
        handle = await AskAgent.start(
            {"model": PROVIDERS[0], "prompt": "loop", "tools": ["word-count@^1"], "max_turns": 3}
        )
        with pytest.raises(loom.WorkflowExecutionError) as caught:
            await handle.result(timeout=60)
    assert caught.value.error_type == "LLMOutputError"
    assert "max_turns=3" in str(caught.value)
    assert len(registered.received) == 3
    unknown = tool_messages(registered.received[1])[0]
    assert "no tool named 'no-such-tool'" in unknown and "word-count" in unknown


async def test_an_unregistered_tool_fails_the_call_with_a_clear_error(
    registered: StubServers, make_worker: Any
) -> None:
    async with make_worker([AskAgent]):
        handle = await AskAgent.start({"model": PROVIDERS[0], "prompt": "hi", "tools": ["nope@^1"]})
        with pytest.raises(loom.ActivityFailedError, match=r"'nope@\^1' not found") as caught:
            await handle.result(timeout=60)
    assert caught.value.error_type == "ActivityNotFoundError"
    assert registered.received == []  # the model is never called without its tools


async def test_replaying_an_agent_history_calls_no_model_and_no_tool(
    registered: StubServers, make_worker: Any, db_path: Any, tmp_path: Path
) -> None:
    registered.model.script = [
        {"tool_calls": [call("word-count", text="a b"), call("shout", text="a b")]},
        {"content": '{"words": 2, "note": "A B"}'},
    ]
    async with make_worker([AskAgent], [shout]):
        handle = await AskAgent.start(
            {
                "model": PROVIDERS[1],
                "prompt": "count",
                "tools": ["word-count@^1", "shout"],
                "structured": True,
            }
        )
        assert await handle.result(timeout=60) == {"answer": {"words": 2, "note": "A B"}}
    exported = tmp_path / "agent.json"
    command = ["history", "export", handle.workflow_id, "--output", str(exported)]
    out = await asyncio.to_thread(CliRunner().invoke, cli, [*command, "--db", str(db_path)])
    assert out.exit_code == 0, out.output
    registered.stop()  # no model and no page server from here on
    loom.testing.replay(AskAgent, exported)  # the same commands, answers read from history
    assert len(registered.received) == 2


@pytest.mark.parametrize("table", ["{not json", '{"gpt-4o": {"input": "cheap"}}'])
def test_a_bad_price_table_stops_the_worker_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, table: str
) -> None:
    prices = tmp_path / "prices.json"
    prices.write_text(table)
    monkeypatch.setenv("LOOM_PRICES", str(prices))
    with pytest.raises(ValueError, match=r"LOOM_PRICES=.*prices\.json"):
        loom.Worker(workflows=[AskAgent], database=str(tmp_path / "x.db"))


async def test_repairs_stop_at_max_turns_naming_the_last_problem(
    registered: StubServers, make_worker: Any
) -> None:
    registered.model.script = [{"content": '{"words": 1}'}]  # `note` missing, every time
    async with make_worker([AskAgent]):
        handle = await AskAgent.start(
            {
                "model": PROVIDERS[1],
                "prompt": "count",
                "structured": True,
                "repairs": 5,
                "max_turns": 2,
            }
        )
        with pytest.raises(loom.WorkflowExecutionError, match=r"max_turns=2.*note") as caught:
            await handle.result(timeout=60)
    assert caught.value.details["turns"] == 2 and len(registered.received) == 2
