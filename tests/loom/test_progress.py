"""get_progress / stream_progress against a real worker on a real SQLite file."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import loom
from loom.client import get_store
from loom.postgres_store import PostgresStore
from loom.progress import WorkflowProgress, progress_message
from loom.sqlite_store import SQLiteStore
from loom.store import NewWorkflow, WorkflowRecord
from tests.conftest import is_postgres


@loom.activity
async def think(topic: str) -> str:
    return f"thought about {topic}"


@loom.workflow(name="Tutor", agent="Robin")
class TutorWorkflow(loom.Workflow[dict, dict]):
    @loom.step(description="reading your essay")
    async def read(self, ctx: loom.WorkflowContext[dict, dict]) -> None:
        await ctx.state.set("notes", await ctx.activity(think, ctx.input["topic"]))
        await ctx.wait_for_signal("next")

    @loom.step(description="grading your answers")
    async def grade(self, ctx: loom.WorkflowContext[dict, dict]) -> None:
        await ctx.wait_for_signal("done")


@loom.workflow(name="Plain")
class PlainWorkflow(loom.Workflow[dict, dict]):
    @loom.step
    async def only(self, ctx: loom.WorkflowContext[dict, dict]) -> None:
        await ctx.wait_for_signal("done")


Update = list[WorkflowProgress]


async def _until(stream: Any, predicate: Callable[[Update], bool], seen: list[Update]) -> Update:
    async for update in stream:
        seen.append(update)
        if predicate(update):
            return update  # type: ignore[no-any-return]  # the stream yields Update
    raise AssertionError("stream ended")


def _steps(update: Update) -> list[tuple[str, int, str]]:
    return [(w["workflow_id"], w["current_step"], w["status"]) for w in update]


async def test_get_progress_reports_agent_step_and_message(
    db_path: Path, make_worker: Callable[..., loom.Worker]
) -> None:
    pending = await TutorWorkflow.start({"topic": "owls"}, workflow_id="t-pending", owner="u1")
    assert await loom.get_progress(owner="u1") == {
        "owner": "u1",
        "workflows": [
            {
                "workflow_id": "t-pending",
                "workflow_name": "Tutor",
                "agent": "Robin",
                "message": "Robin is getting started",
                "current_step": 1,
                "total_steps": 2,
                "status": "PENDING",
            }
        ],
    }
    await TutorWorkflow.start({"topic": "bats"}, workflow_id="t-other", owner="u2")
    async with make_worker([TutorWorkflow], [think]):
        stream = loom.stream_progress(owner="u1")
        async with contextlib.aclosing(stream):
            seen: list[Update] = []
            await _until(stream, lambda s: _steps(s) == [("t-pending", 1, "RUNNING")], seen)
            [entry] = seen[-1]
            assert entry["message"] == "Robin is reading your essay"
            await pending.signal("next")
            await _until(stream, lambda s: _steps(s) == [("t-pending", 2, "RUNNING")], seen)
            assert seen[-1][0]["message"] == "Robin is grading your answers"
            await pending.signal("done")
            await _until(stream, lambda s: s == [], seen)
        assert await pending.status() is loom.WorkflowStatus.COMPLETED
        # Every yield differs from the one before: the stream never repeats itself.
        assert all(a != b for a, b in itertools.pairwise(seen))
        [other] = (await loom.get_progress(owner="u2"))["workflows"]
        assert other["workflow_id"] == "t-other"
        await loom.get_handle("t-other").cancel()


async def test_stream_unsubscribes_when_closed(db_path: Path) -> None:
    store = get_store()
    before = len(store.wakeups._progress)
    stream = loom.stream_progress(owner="nobody")
    first = await anext(stream)
    assert first == []  # a list of workflows, unlike get_progress's {"owner", "workflows"}
    assert len(store.wakeups._progress) == before + 1
    await stream.aclose()
    assert len(store.wakeups._progress) == before


async def test_stream_polls_for_writes_from_another_process(db_path: Path) -> None:
    """A second store on the same file stands in for another process: its writes wake nobody."""
    compiled = PlainWorkflow.compile()
    other = PostgresStore(str(db_path)) if is_postgres(db_path) else SQLiteStore(db_path)
    try:
        stream = loom.stream_progress(owner="u3", poll_interval=0.05)
        async with contextlib.aclosing(stream):
            seen: list[Update] = []
            await _until(stream, lambda s: s == [], seen)
            await other.create_workflow(
                NewWorkflow(
                    workflow_id="p1",
                    workflow_name=compiled.name,
                    workflow_version=compiled.version,
                    input={},
                    state=compiled.initial_state(),
                    source_hash=compiled.source_hash,
                    total_steps=len(compiled.steps),
                    seed=1,
                    owner="u3",
                )
            )
            await _until(stream, lambda s: _steps(s) == [("p1", 1, "PENDING")], seen)
            assert seen[-1][0]["message"] == "Getting started"
            assert seen[-1][0]["agent"] is None
    finally:
        await other.close()


def _record(**fields: Any) -> WorkflowRecord:
    base: dict[str, Any] = {
        "workflow_id": "w",
        "workflow_name": "W",
        "workflow_version": "1",
        "status": loom.WorkflowStatus.RUNNING,
        "input": {},
        "state": {},
        "error": None,
        "owner": None,
        "agent": None,
        "parent_id": None,
        "current_step": None,
        "step_description": None,
        "step_index": 0,
        "total_steps": 1,
        "last_sequence": 1,
        "processed_sequence": 1,
        "epoch": 0,
        "created_at": 0,
        "updated_at": 0,
    }
    return WorkflowRecord(**{**base, **fields})


def test_message_falls_back_without_agent_or_description() -> None:
    assert progress_message(_record(step_description="charging")) == "Charging"
    assert progress_message(_record(current_step="pay")) == "Working on pay"
    assert progress_message(_record(agent="Ada", current_step="pay")) == "Ada is working on pay"
    assert progress_message(_record(agent="Ada")) == "Ada is working"
    assert progress_message(_record(status=loom.WorkflowStatus.PENDING)) == "Getting started"
    done = _record(agent="Ada", status=loom.WorkflowStatus.COMPLETED, current_step="pay")
    assert progress_message(done) == "Ada is done"
