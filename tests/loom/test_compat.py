"""loom-core spellings (DESIGN.md "Seed compatibility") behave like the native ones."""

from __future__ import annotations

import importlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypedDict

import click
import pytest
from click.testing import CliRunner

import loom
from loom._export import read_history
from loom.cli import main as cli
from loom.client import get_store
from loom.history import Event, EventKind
from loom.replay import WorkflowRun

HISTORIES = Path(__file__).parent / "histories"


def test_loom_core_import_paths_are_the_same_objects() -> None:
    assert importlib.import_module("loom.core.context").WorkflowContext is loom.WorkflowContext
    assert importlib.import_module("loom.core.workflow").Workflow is loom.Workflow
    schemas = importlib.import_module("loom.schemas.state")
    assert (schemas.Input, schemas.State) == (loom.Input, loom.State)
    assert loom.__version__ == importlib.metadata.version("loom")


class Scores(loom.State):
    total: int = 0
    notes: list[str]


class Person(dict):  # type: ignore[type-arg]  # the plain loom-core form
    name: str


class Strict(TypedDict):
    name: str
    age: int


@loom.workflow(name="CompatGreet")
class Greet(loom.Workflow[Person, Scores]):
    @loom.step
    async def greet(self, ctx: loom.WorkflowContext[Scores]) -> None:
        ctx.state.total = len(ctx.input["name"])
        ctx.state["notes"] = [f"hi {ctx.input['name']}"]


@loom.workflow(name="CompatStrict")
class StrictWorkflow(loom.Workflow[Strict, dict]):  # type: ignore[type-arg]
    @loom.step
    async def only(self, ctx: loom.WorkflowContext[Strict, dict]) -> None:  # type: ignore[type-arg]
        ctx.state.age = ctx.input["age"]


async def test_dict_subclass_input_and_state_validate_and_come_back_as_the_class() -> None:
    compiled = Greet.compile()
    assert compiled.initial_state() == {"total": 0}  # class values are defaults
    state = await compiled.execute(Person(name="Ann"))
    assert type(state) is Scores
    assert state == {"total": 3, "notes": ["hi Ann"]}
    assert state.total == 3  # loom.State keys read as attributes too
    with pytest.raises(AttributeError, match="no key 'missing'"):
        _ = state.missing
    with pytest.raises(TypeError, match="name"):
        compiled.encode_input({"name": 12})
    assert compiled.encode_input({"name": "x", "extra": 1}) == {"name": "x", "extra": 1}


def test_typeddict_is_validated_on_every_python() -> None:
    compiled = StrictWorkflow.compile()
    assert compiled.encode_input({"name": "a", "age": "7"}) == {"name": "a", "age": 7}
    with pytest.raises(TypeError, match="age"):
        compiled.encode_input({"name": "a"})


def test_one_parameter_context_reads_as_any_input() -> None:
    assert loom.WorkflowContext[Scores] == loom.WorkflowContext[Any, Scores]


@loom.workflow(name="CompatSleeps")
class Sleeps(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
    @loom.step
    async def nap(self, ctx: loom.WorkflowContext[dict, dict]) -> None:  # type: ignore[type-arg]
        start = ctx.now()
        await ctx.sleep(0.05)
        await ctx.sleep(timedelta(milliseconds=50))
        await ctx.sleep(delta=timedelta(milliseconds=50))
        await ctx.sleep(until=ctx.now() + timedelta(milliseconds=50))
        await ctx.sleep(until=datetime(2000, 1, 1))  # past (naive = UTC): fires at once
        ctx.state.slept_ms = int((ctx.now() - start).total_seconds() * 1000)
        ctx.state.id = ctx.id


async def test_every_sleep_spelling_is_a_durable_timer(db_path: Path, make_worker: Any) -> None:
    async with make_worker([Sleeps]):
        handle = await Sleeps.start({}, workflow_id="naps")
        state = await handle.result(timeout=20)
    assert state["id"] == "naps" and state["slept_ms"] >= 200
    events = await get_store().list_events("naps")
    timers = [e for e in events if e.kind is EventKind.TIMER_STARTED]
    fired = {e.payload["seq"]: e.created_at for e in events if e.kind is EventKind.TIMER_FIRED}
    assert len(timers) == 5
    until = timers[3]
    # until= is relative to the workflow's clock: the time of the event being processed.
    assert until.payload["fire_at"] == fired[timers[2].payload["seq"]] + 50
    assert timers[4].payload["fire_at"] <= timers[4].created_at


async def test_sleep_takes_exactly_one_duration() -> None:
    @loom.workflow(name="CompatBadSleep")
    class Bad(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
        @loom.step
        async def nap(self, ctx):  # type: ignore[no-untyped-def]
            await ctx.sleep(1, delta=timedelta(seconds=1))

    with pytest.raises(loom.WorkflowExecutionError, match="exactly one"):
        await Bad.compile().execute({})


@loom.workflow(name="CompatReplace")
class Replace(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
    @loom.step
    async def edit(self, ctx: loom.WorkflowContext[dict, dict]) -> None:  # type: ignore[type-arg]
        await ctx.state.set("draft", "v1")
        await ctx.state.set("count", 1)
        await ctx.state.update(lambda s: {"count": s["count"] + 1, "final": True})
        await ctx.wait_until_signal("go")
        ctx.state.after = sorted(ctx.state.keys())


@loom.workflow(name="CompatPrune")
class Prune(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
    @loom.step
    async def edit(self, ctx: loom.WorkflowContext[dict, dict]) -> None:  # type: ignore[type-arg]
        await ctx.state.set("keep", 1)
        await ctx.state.set("drop", 2)
        await ctx.state.update(lambda s: {"keep": s["keep"]})  # removes only: no change
        await ctx.wait_until_signal("go")
        ctx.state.after = sorted(ctx.state.keys())


def _load(name: str) -> list[Event]:
    """A golden history: the file `loom history export` writes."""
    return read_history(HISTORIES / name).events


async def test_update_replaces_the_state_and_records_removed_keys(
    db_path: Path, make_worker: Any
) -> None:
    # No cache: the second activation replays the first, removal included.
    async with make_worker([Replace], max_cached_workflows=0):
        handle = await Replace.start({}, workflow_id="replace-1")
        await handle.signal("go")
        state = await handle.result(timeout=10)
    assert state == {"count": 2, "final": True, "after": ["count", "final"]}
    events = await get_store().list_events("replace-1")
    [update] = [e.payload for e in events if e.kind is EventKind.STATE_UPDATE]
    assert update["changes"] == {"count": 2, "final": True}
    assert update["removed"] == ["draft"]


def _replay(name: str, workflow: type[loom.Workflow[Any, Any]] = Replace) -> dict[str, Any]:
    run = WorkflowRun(workflow.compile(), "golden")
    run.apply(_load(name))
    assert run.failure is None, name
    activation = run.take_activation()
    # Replay reproduces exactly the recorded commands: nothing new is emitted.
    assert [e.kind for e in activation.events] == [EventKind.WORKFLOW_COMPLETED], name
    assert activation.state is not None
    return dict(activation.state)


def test_golden_history_with_removed_keys_replays() -> None:
    assert _replay("state_update_replace.json") == {
        "count": 2,
        "final": True,
        "after": ["count", "final"],
    }


def test_golden_history_from_before_update_replaced_replays_as_a_merge() -> None:
    # Written when update() merged: its STATE_UPDATE has no `removed` field, and a workflow
    # started then must finish with the state it would have had (draft kept).
    assert _replay("state_update_merge.json") == {
        "draft": "v1",
        "count": 2,
        "final": True,
        "after": ["count", "draft", "final"],
    }


def test_golden_removal_only_update_replays_both_ways() -> None:
    assert _replay("state_update_prune.json", Prune) == {"keep": 1, "after": ["keep"]}
    # Before, that update changed nothing and so recorded no event; it replays as nothing.
    assert _replay("state_update_prune_merge.json", Prune) == {
        "keep": 1,
        "drop": 2,
        "after": ["drop", "keep"],
    }


@loom.activity(retry_count=0)
async def fails_once(marker: str) -> str:
    """Always fails, to count attempts."""
    raise RuntimeError(marker)


@loom.activity(retry_count=2, initial_interval=0.01, description="Retried twice")
async def fails_thrice(marker: str) -> str:
    raise RuntimeError(marker)


def test_retry_count_counts_retries_and_retry_counts_attempts() -> None:
    assert fails_once.retry.max_attempts == 1
    assert fails_thrice.retry.max_attempts == 3
    assert fails_thrice.description == "Retried twice"
    assert fails_once.description == "Always fails, to count attempts."

    async def noop() -> None:
        pass

    assert loom.activity(retry=2)(noop).retry.max_attempts == 2
    with pytest.raises(TypeError, match="not both"):
        loom.activity(retry=2, retry_count=1)
    with pytest.raises(ValueError, match="retry_count"):
        loom.activity(retry_count=-1)


@loom.workflow(name="CompatRetry")
class Retry(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
    @loom.step
    async def call(self, ctx: loom.WorkflowContext[dict, dict]) -> None:  # type: ignore[type-arg]
        try:
            await ctx.activity(fails_once, "zero")
        except loom.ActivityFailedError as err:
            ctx.state.zero = err.attempt
        try:
            await ctx.activity(fails_thrice, "two")
        except loom.ActivityFailedError as err:
            ctx.state.two = err.attempt


async def test_retry_count_zero_runs_one_attempt(db_path: Path, make_worker: Any) -> None:
    async with make_worker([Retry], [fails_once, fails_thrice]):
        state = await (await Retry.start({})).result(timeout=20)
    assert state == {"zero": 1, "two": 3}


@loom.workflow(name="CompatWaits")
class Waits(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
    @loom.step
    async def wait(self, ctx: loom.WorkflowContext[dict, dict]) -> None:  # type: ignore[type-arg]
        await ctx.wait_for_signal("never")


async def test_cancelled_result_is_an_exception_on_the_client(
    db_path: Path, make_worker: Any
) -> None:
    async with make_worker([Waits]):
        handle = await Waits.start({}, workflow_id="to-cancel", owner="o")
        info = await handle.info()
        assert info["workflow_id"] == "to-cancel" and info["owner"] == "o"
        await handle.cancel("no longer needed")
        with pytest.raises(Exception) as caught:  # the point: plain Exception
            await handle.result(timeout=10)
    assert isinstance(caught.value, loom.CancelledWorkflowError)
    assert isinstance(caught.value, loom.WorkflowCancelledError)
    assert caught.value.reason == "no longer needed"
    assert (await handle.info())["status"] is loom.WorkflowStatus.CANCELED
    # Inside workflow code cancellation stays out of reach of `except Exception`.
    assert not issubclass(loom.WorkflowCancelledError, Exception)


def test_cancelled_is_an_input_spelling_of_canceled(tmp_path: Path) -> None:
    assert loom.WorkflowStatus("CANCELLED") is loom.WorkflowStatus.CANCELED
    assert loom.WorkflowStatus("cancelled") is loom.WorkflowStatus.CANCELED
    assert loom.WorkflowStatus.CANCELED.value == "CANCELED"
    with pytest.raises(ValueError):
        loom.WorkflowStatus("CANCELLING")
    db = tmp_path / "loom.db"
    runner = CliRunner()
    assert runner.invoke(cli, ["init", "--db", str(db)]).exit_code == 0
    listed = runner.invoke(cli, ["list", "--status", "CANCELLED", "--json", "--db", str(db)])
    assert listed.exit_code == 0, listed.output
    assert json.loads(listed.stdout) == []


def test_worker_takes_the_loom_core_flags() -> None:
    command = cli.get_command(click.Context(cli), "worker")
    assert command is not None
    context = command.make_context("worker", ["--app", "x", "-w", "7", "-p", "0.2"])
    assert context.params["concurrency"] == 7 and context.params["poll_interval"] == 0.2
    context = command.make_context("worker", ["--app", "x", "--workers", "3"])
    assert context.params["concurrency"] == 3


def test_compat_names_are_documented() -> None:
    for name in ("wait_until_signal", "id", "sleep"):
        assert getattr(loom.WorkflowContext, name).__doc__, name
    assert loom.WorkflowHandle.info.__doc__
    assert UTC  # ctx.now() is UTC: naive until= values are read in it
