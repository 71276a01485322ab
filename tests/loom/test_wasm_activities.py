"""Workflows calling registered WebAssembly activities by name and version range."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from pydantic import BaseModel

import loom
from activity_registry import Registry
from loom.client import get_store
from loom.history import EventKind
from tests.activity_registry.activity_files import SPIN_WAT, constant_wat, write_activity
from tests.wasm_activities.build import EXAMPLES_DIR, build_example


class Counts(BaseModel):
    words: int
    chars: int


@loom.workflow(name="CountWords")
class CountWords(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
    @loom.step
    async def count(self, ctx):  # type: ignore[no-untyped-def]
        counts = await ctx.activity(
            "word-count@^1", {"text": ctx.input["text"]}, result_type=Counts
        )
        assert isinstance(counts, Counts)
        ctx.state.words = counts.words


@loom.workflow(name="CallTwice")
class CallTwice(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
    @loom.step
    async def call(self, ctx):  # type: ignore[no-untyped-def]
        spec = ctx.input["spec"]
        ctx.state.first = await ctx.activity(spec, ctx.input.get("payload", {}))
        if ctx.input.get("wait"):
            await ctx.wait_for_signal("go")
        ctx.state.second = await ctx.activity(spec, ctx.input.get("payload", {}))


async def _register(db_path: Path, manifest: Path) -> None:
    async with Registry(db_path) as registry:
        await registry.register(manifest)


async def test_workflow_calls_a_c_reactor_by_range(db_path, make_worker) -> None:
    build_example("word-count")
    await _register(db_path, EXAMPLES_DIR / "word-count" / "activity.toml")
    async with make_worker([CountWords]):
        handle = await CountWords.start({"text": "the quick brown fox"})
        assert await handle.result(timeout=20) == {"words": 4}
    events = await get_store().list_events(handle.workflow_id)
    done = next(e for e in events if e.kind is EventKind.ACTIVITY_COMPLETED)
    assert done.payload["pin"]["version"] == "1.0.0"
    assert len(done.payload["pin"]["sha256"]) == 64
    assert done.payload["usage"]["output_bytes"] > 0


async def test_running_workflow_keeps_its_pinned_version(db_path, make_worker, tmp_path) -> None:
    await _register(db_path, write_activity(tmp_path, name="const", wat=constant_wat('{"v":1}')))
    async with make_worker([CallTwice]):
        old = await CallTwice.start({"spec": "const@^1", "wait": True})
        while (await old.state()).get("first") is None:
            await asyncio.sleep(0.02)
        newer = write_activity(tmp_path, name="const", version="1.1.0", wat=constant_wat('{"v":2}'))
        await _register(db_path, newer)
        await old.signal("go")
        assert await old.result(timeout=20) == {"first": {"v": 1}, "second": {"v": 1}}
        fresh = await CallTwice.start({"spec": "const@^1"})
        assert await fresh.result(timeout=20) == {"first": {"v": 2}, "second": {"v": 2}}


async def test_sandbox_timeout_follows_the_retry_policy(db_path, make_worker, tmp_path) -> None:
    retry = "[limits]\ntimeout_ms = 50\n[retry]\nmax_attempts = 2\ninitial_interval_ms = 10\n"
    await _register(db_path, write_activity(tmp_path, name="spin", wat=SPIN_WAT, extra=retry))
    async with make_worker([CallTwice]):
        handle = await CallTwice.start({"spec": "spin@1.0.0"})
        with pytest.raises(loom.ActivityFailedError) as info:
            await handle.result(timeout=20)
    assert info.value.activity_name == "spin@1.0.0"
    assert info.value.error_type == "ActivityTimeout"
    logs = await get_store().list_logs(handle.workflow_id)
    assert sum("attempt 1 failed: ActivityTimeout" in m for _, _, m in logs) == 1


async def test_schema_violations_are_not_retried(db_path, make_worker, tmp_path) -> None:
    strict = {"type": "object", "required": ["w"], "properties": {"w": {"type": "integer"}}}
    await _register(
        db_path,
        write_activity(
            tmp_path,
            name="strict",
            wat=constant_wat('{"v":1}'),
            input_schema=strict,
            output_schema=strict,
        ),
    )
    async with make_worker([CallTwice]):
        bad_input = await CallTwice.start({"spec": "strict", "payload": {"w": "x"}})
        with pytest.raises(loom.ActivityFailedError) as info:
            await bad_input.result(timeout=20)
        assert info.value.error_type == "SchemaViolationError"
        assert "input" in info.value.error_message
        bad_output = await CallTwice.start({"spec": "strict", "payload": {"w": 1}})
        with pytest.raises(loom.ActivityFailedError) as info:
            await bad_output.result(timeout=20)
        assert info.value.error_type == "SchemaViolationError"
        assert "output" in info.value.error_message
    for handle in (bad_input, bad_output):
        events = await get_store().list_events(handle.workflow_id)
        failed = next(e for e in events if e.kind is EventKind.ACTIVITY_FAILED)
        assert failed.payload["attempt"] == 1


async def test_unknown_name_and_unsatisfied_range_suspend_until_registered(
    db_path, make_worker, tmp_path
) -> None:
    """Registering the activity fixes either, so the workflow is SUSPENDED (not failed)
    with the registry's error, and a resume after the registration completes it."""
    await _register(db_path, write_activity(tmp_path, name="const", wat=constant_wat("{}")))
    async with make_worker([CallTwice], handbacks=0):
        missing = await CallTwice.start({"spec": "nothing-here@^1"})
        too_new = await CallTwice.start({"spec": "const@^2"})
        for handle in (missing, too_new):
            for _ in range(400):
                if await handle.status() is loom.WorkflowStatus.SUSPENDED:
                    break
                await asyncio.sleep(0.05)
        missing_error = (await missing.info())["error"]
        assert missing_error["type"] == "ActivityNotFoundError"
        assert "activity 'nothing-here@^1' not found" in missing_error["message"]
        too_new_error = (await too_new.info())["error"]
        assert "registered: 1.0.0" in too_new_error["message"]
        v2 = tmp_path / "v2"
        v2.mkdir()
        await _register(
            db_path, write_activity(v2, name="const", version="2.0.0", wat=constant_wat("{}"))
        )
        assert await too_new.resume() is True
        assert await too_new.result(timeout=20) == {"first": {}, "second": {}}
    events = await get_store().list_events(too_new.workflow_id)
    done = next(e for e in events if e.kind is EventKind.ACTIVITY_COMPLETED)
    assert done.payload["pin"]["version"] == "2.0.0"
    assert await missing.status() is loom.WorkflowStatus.SUSPENDED
