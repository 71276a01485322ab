"""A worker SIGKILLed between an agent's turns: the next worker replays the finished model and
tool calls from history and calls neither again; only the call in flight runs again."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import pytest

from activity_registry import Registry
from examples.build import build_example
from examples.demo import manifest_for
from examples.llm_stub import StubServers
from loom.client import get_store
from loom.history import EventKind
from tests.e2e.agent_app import ToolAgent
from tests.e2e.conftest import wait_serving

API_KEY = "sk-test-crash-key"


async def _wait(condition: Any, what: str, timeout: float = 120) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.mark.timeout(400)
async def test_sigkill_between_turns_repeats_no_finished_call(
    any_db: Any, spawn_worker: Any, tmp_path: Path
) -> None:
    with StubServers(llm_port=0, page_port=0, api_key=API_KEY, script=[]) as stubs:
        page = stubs.page_url("durable-execution")
        stubs.model.script = [
            {"tool_calls": [{"name": "web-fetch", "arguments": json.dumps({"url": page})}]},
            {"tool_calls": [{"name": "word-count", "arguments": '{"text": "one two"}'}]},
            {"content": "two words on that page"},
        ]
        nets = {
            "openai-chat": f"http://127.0.0.1:{stubs.llm_port}",
            "web-fetch": f"http://127.0.0.1:{stubs.page_port}",
        }
        async with Registry(any_db) as registry:
            for name in ["openai-chat", "web-fetch", "word-count"]:
                build_example(name)
                manifest = manifest_for(name, nets.get(name), tmp_path / "stage")
                await registry.register(manifest, approve_grants=True)
        stubs.model.hold(2)  # the third model call waits: two model and two tool calls are done
        handle = await ToolAgent.start({"prompt": f"How many words are on {page}?"})
        env = {"OPENAI_API_KEY": API_KEY}
        first = spawn_worker(any_db, "--lease-seconds", "2", app="tests.e2e.agent_app", env=env)
        await _wait(lambda: 2 in stubs.model.turns, "the third model call")
        first.send_signal(signal.SIGKILL)
        first.wait()
        stubs.model.release()
        second = spawn_worker(any_db, "--lease-seconds", "2", app="tests.e2e.agent_app", env=env)
        await wait_serving(tmp_path / "worker-1.log")
        assert await handle.result(timeout=120) == {"answer": "two words on that page"}
        assert second.poll() is None
        assert stubs.model.turns.count(0) == 1  # finished model calls: never again
        assert stubs.model.turns.count(1) == 1
        assert stubs.model.turns.count(2) == 2  # the one in flight at the kill, once more
        assert stubs.requests["pages:ok"] == 1  # the fetch tool ran once
    events = await get_store().list_events(handle.workflow_id)
    done = [e.payload["name"] for e in events if e.kind is EventKind.ACTIVITY_COMPLETED]
    assert done == [
        "loom.tools",
        "openai-chat@^1",
        "web-fetch@^1",
        "openai-chat@^1",
        "word-count@^1",
        "openai-chat@^1",
    ]
