"""The provider activities on their own, through the registry against the stub: each wire
format built from the neutral input (system prompt, tool calls and results, tools, output
schema), the neutral output read back, the key only for the granted host, Azure by config."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from activity_registry import Registry
from examples.build import build_example
from examples.demo import manifest_for
from examples.llm_stub import StubServers
from wasm_activities import GuestError

pytestmark = pytest.mark.timeout(300)

API_KEY = "sk-test-provider-key"
SECRETS = {"OPENAI_API_KEY": API_KEY, "ANTHROPIC_API_KEY": API_KEY}
TOOLS = [
    {
        "name": "word-count",
        "description": "Counts words",
        "parameters": {"type": "object", "properties": {"text": {"type": "string"}}},
    }
]
CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "system", "content": 'Quote "exactly": ü ✓'},
    {"role": "user", "content": "count a b c"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"id": "c1", "name": "word-count", "arguments": '{"text": "a b c"}'},
            {"id": "c2", "name": "word-count", "arguments": '{"text": "d"}'},
        ],
    },
    {"role": "tool", "tool_call_id": "c1", "content": '{"words": 3}'},
    {"role": "tool", "tool_call_id": "c2", "content": "error: boom", "is_error": True},
]


@pytest.fixture
def servers() -> Iterator[StubServers]:
    script = [{"tool_calls": [{"name": "word-count", "arguments": '{"text": "x y"}'}]}]
    script.append({"content": "done"})
    with StubServers(llm_port=0, page_port=0, api_key=API_KEY, script=script) as stubs:
        yield stubs


@pytest.fixture
async def registry(tmp_path: Path, servers: StubServers) -> AsyncIterator[Registry]:
    async with Registry(tmp_path / "loom.db") as registry:
        for name in ["openai-chat", "anthropic-chat"]:
            build_example(name)
            manifest = manifest_for(name, f"http://127.0.0.1:{servers.llm_port}", tmp_path)
            await registry.register(manifest, approve_grants=True)
        yield registry


async def run(registry: Registry, spec: str, request: dict[str, Any]) -> dict[str, Any]:
    activity = await registry.resolve(spec)
    output: dict[str, Any] = (await registry.run(activity, request, secrets=SECRETS)).output
    return output


@pytest.mark.parametrize("spec", ["openai-chat@^1", "anthropic-chat@^1"])
async def test_first_turn_returns_neutral_tool_calls(
    registry: Registry, servers: StubServers, spec: str
) -> None:
    answer = await run(registry, spec, {"messages": CONVERSATION[:3], "tools": TOOLS})
    (call,) = answer["tool_calls"]
    assert (call["name"], json.loads(call["arguments"])) == ("word-count", {"text": "x y"})
    assert answer["finish_reason"] == "tool_calls"
    assert answer["content"] == ""
    usage = answer["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0


async def test_openai_wire_format(registry: Registry, servers: StubServers) -> None:
    schema = {"type": "object", "required": ["n"]}
    response_format = {"type": "json_schema", "json_schema": {"name": "o", "schema": schema}}
    request = {"messages": CONVERSATION, "tools": TOOLS, "response_format": response_format}
    answer = await run(registry, "openai-chat@^1", {**request, "tool_choice": "auto"})
    assert (answer["content"], answer["finish_reason"], answer["model"]) == (
        "done",
        "stop",
        "loom-stub-1",
    )
    sent = servers.received[-1]
    assert sent["tools"] == [{"type": "function", "function": TOOLS[0]}]
    assert sent["response_format"] == response_format and sent["tool_choice"] == "auto"
    assert [m["role"] for m in sent["messages"]] == ["system"] * 2 + [
        "user",
        "assistant",
        "tool",
        "tool",
    ]
    assert sent["messages"][1]["content"] == 'Quote "exactly": ü ✓'
    assert sent["messages"][3]["tool_calls"][0] == {
        "id": "c1",
        "type": "function",
        "function": {"name": "word-count", "arguments": '{"text": "a b c"}'},
    }
    assert sent["messages"][4] == {"role": "tool", "content": '{"words": 3}', "tool_call_id": "c1"}


async def test_anthropic_wire_format(registry: Registry, servers: StubServers) -> None:
    schema = {"type": "object", "required": ["n"]}
    request = {
        "messages": CONVERSATION,
        "tools": TOOLS,
        "response_format": {"json_schema": {"schema": schema}},
    }
    answer = await run(registry, "anthropic-chat@^1", request)
    assert (answer["content"], answer["finish_reason"], answer["model"]) == (
        "done",
        "stop",
        "loom-stub-claude",
    )
    sent = servers.received[-1]
    assert sent["max_tokens"] == 1024  # required by the Messages API: a default is sent
    assert sent["system"].startswith('Be brief.\n\nQuote "exactly": ü ✓\n\nAnswer with one JSON')
    assert json.dumps(schema, separators=(",", ":")) in sent["system"]
    assert sent["tools"] == [
        {
            "name": "word-count",
            "description": "Counts words",
            "input_schema": TOOLS[0]["parameters"],
        }
    ]
    user, assistant, results = sent["messages"]  # both tool results share one user turn
    assert user == {"role": "user", "content": "count a b c"}
    assert assistant["content"][0] == {
        "type": "tool_use",
        "id": "c1",
        "name": "word-count",
        "input": {"text": "a b c"},
    }
    assert results["role"] == "user"
    assert results["content"] == [
        {"type": "tool_result", "tool_use_id": "c1", "content": '{"words": 3}'},
        {"type": "tool_result", "tool_use_id": "c2", "content": "error: boom", "is_error": True},
    ]


async def test_wrong_key_is_an_http_error(registry: Registry) -> None:
    for spec in ["openai-chat@^1", "anthropic-chat@^1"]:
        activity = await registry.resolve(spec)
        wrong = {k: "sk-wrong-key-000" for k in SECRETS}
        with pytest.raises(GuestError, match="HTTP 401"):
            await registry.run(activity, {"messages": CONVERSATION[:3]}, secrets=wrong)


async def test_azure_is_configuration(tmp_path: Path, servers: StubServers) -> None:
    """Azure OpenAI: the deployment URL and the `api-key` header come from the manifest."""
    build_example("openai-chat")
    staged = manifest_for("openai-chat", f"http://127.0.0.1:{servers.llm_port}", tmp_path)
    endpoint = f"http://127.0.0.1:{servers.llm_port}/v1/chat/completions?api-version=2024-06-01"
    text = staged.read_text().replace(
        'config = { endpoint = "', 'config = { auth = "api-key", secret = "AZURE_KEY", endpoint = "'
    )
    text = text.replace('/v1/chat/completions"', '/v1/chat/completions?api-version=2024-06-01"')
    text = text.replace('secrets = ["OPENAI_API_KEY"]', 'secrets = ["AZURE_KEY"]')
    text = text.replace('name = "openai-chat"', 'name = "azure-chat"')
    azure = tmp_path / "azure" / "activity.toml"
    azure.parent.mkdir()
    azure.write_text(text)
    async with Registry(tmp_path / "azure.db") as registry:
        await registry.register(azure, approve_grants=True)
        activity = await registry.resolve("azure-chat@^1")
        assert activity.grants.config["endpoint"] == endpoint
        result = await registry.run(
            activity, {"messages": CONVERSATION[:3]}, secrets={"AZURE_KEY": API_KEY}
        )
    assert result.output["tool_calls"][0]["name"] == "word-count"
    assert servers.requests == {"llm:ok": 1}  # the stub took the key from `api-key`
