"""The example AI/tool activities against the stub servers, through the registry: outputs fit
their schemas, the API key reaches only the granted endpoint, and grants are enforced."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from activity_registry import Registry
from examples.build import build_example
from examples.demo import manifest_for
from examples.llm_stub import PAGES, StubServers, summarize
from wasm_activities import CapabilityDenied, GuestError

# The first test to need a module builds and compiles it (the 18 MB Python component takes
# a minute or more on a loaded 2-core machine); later tests hit the cache.
pytestmark = pytest.mark.timeout(600)

API_KEY = "sk-test-key"


@pytest.fixture(scope="module")
def servers() -> Iterator[StubServers]:
    with StubServers(llm_port=0, page_port=0, api_key=API_KEY) as stubs:
        yield stubs


@pytest.fixture
async def registry(tmp_path: Path, servers: StubServers) -> AsyncIterator[Registry]:
    nets = {
        "llm-chat": f"http://127.0.0.1:{servers.llm_port}",
        "web-fetch": f"http://127.0.0.1:{servers.page_port}",
    }
    async with Registry(tmp_path / "loom.db") as registry:
        for name in ["llm-chat", "web-fetch", "md-report"]:
            build_example(name)
            manifest = manifest_for(name, nets.get(name), tmp_path / "stage")
            await registry.register(manifest, approve_grants=True)  # the stub servers' hosts
        yield registry


async def test_web_fetch_returns_title_and_text(registry: Registry, servers: StubServers) -> None:
    fetch = await registry.resolve("web-fetch@^1")
    page = (await registry.run(fetch, {"url": servers.page_url("wasm-sandboxing")})).output
    title, text = PAGES["wasm-sandboxing"]
    assert page["status"] == 200
    assert page["title"] == title
    assert page["text"].splitlines() == [title, text]  # nav, style and script are dropped
    short = await registry.run(fetch, {"url": servers.page_url("wasm-sandboxing"), "max_chars": 10})
    assert short.output["truncated"] is True
    assert len(short.output["text"]) == 10


async def test_web_fetch_only_reaches_its_allowlist(registry: Registry) -> None:
    fetch = await registry.resolve("web-fetch@^1")
    with pytest.raises(CapabilityDenied, match=r"example\.com"):
        await registry.run(fetch, {"url": "http://example.com/"})


async def test_llm_chat_sends_the_secret_only_as_a_placeholder(
    registry: Registry, servers: StubServers
) -> None:
    chat = await registry.resolve("llm-chat@^1")
    messages = [
        {"role": "system", "content": 'Be brief, "exact" and kind: ü ✓ 🙂'},
        {"role": "user", "content": "Summarize.\n---\nOne. Two! Three?"},
    ]
    result = await registry.run(chat, {"messages": messages}, secrets={"OPENAI_API_KEY": API_KEY})
    assert result.output["content"] == "One. Two!"
    assert result.output["model"] == "loom-stub-1"
    usage = result.output["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0
    with pytest.raises(GuestError, match="HTTP 401"):
        await registry.run(chat, {"messages": messages}, secrets={"OPENAI_API_KEY": "wrong"})
    with pytest.raises(CapabilityDenied):  # the endpoint in the input must be granted too
        await registry.run(
            chat,
            {"messages": messages, "endpoint": "http://127.0.0.2:9/v1/chat/completions"},
            secrets={"OPENAI_API_KEY": API_KEY},
        )


async def test_md_report_renders_markdown(registry: Registry) -> None:
    report = await registry.resolve("md-report@^1")
    source = {"url": "http://x/", "title": "X", "summary": "Short.", "words": 3}
    result = await registry.run(report, {"topic": "t", "agent": "Ada", "sources": [source]})
    assert result.output["markdown"].startswith("# Research report: t\n")
    assert result.output["sections"] == 1


def test_stub_is_openai_compatible(servers: StubServers) -> None:
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "A. B. C."}]})
    request = urllib.request.Request(
        servers.llm_endpoint,
        data=body.encode(),
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        answer = json.load(response)
    assert answer["choices"][0]["message"] == {
        "role": "assistant",
        "content": summarize("A. B. C."),
    }
    assert answer["model"] == "m"
    request.remove_header("Authorization")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=5)
    assert info.value.code == 401
    info.value.close()
