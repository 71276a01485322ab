"""State patches: in-place edits of nested state are recorded as small JSON Patch ops, replay
and readers (handles, inspect) see the current state, and histories written before patches
still replay."""

from __future__ import annotations

import copy
import pickle
import sqlite3
from pathlib import Path
from typing import Any

import pytest

import loom
from loom._export import read_history
from loom._patch import TrackedDict, TrackedList
from loom.client import get_store
from loom.history import EventKind, fold_state
from loom.replay import WorkflowRun

from ..conftest import is_postgres

HISTORIES = Path(__file__).parent / "histories"


@loom.workflow(name="NestedEdits")
class NestedEdits(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
    """The workflow of the golden `nested_whole_value.json` (written before patches)."""

    @loom.step
    async def edit(self, ctx):  # type: ignore[no-untyped-def]
        ctx.state.items = []
        ctx.state.meta = {"n": 0}
        for i in range(3):
            ctx.state.items.append({"i": i})
            ctx.state.meta["n"] += 1
            await ctx.sleep(0)
        ctx.state.items[0]["i"] = 10
        del ctx.state.items[1]
        await ctx.sleep(0)


NESTED_RESULT = {"items": [{"i": 10}, {"i": 2}], "meta": {"n": 3}}


@loom.workflow(name="EveryEdit")
class EveryEdit(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
    @loom.step
    async def edit(self, ctx):  # type: ignore[no-untyped-def]
        ctx.state.xs = [3, 1]
        ctx.state.d = {"a/b": 1, "t~": 2}
        await ctx.sleep(0)
        xs = ctx.state.xs
        xs.append([0])
        xs.insert(0, 9)
        xs[-1].append(1)
        xs.extend([4, 5])
        xs.pop()
        xs.remove(1)
        xs[0] = {"k": []}
        xs[0]["k"].append(True)
        d = ctx.state.d
        d["a/b"] = 10
        d["t~"] += 1
        d.setdefault("new", []).append("x")
        d.update(z=None)
        del d["z"]
        d.pop("missing", None)
        await ctx.sleep(0)
        xs.sort(key=str)  # no small op for a sort: the list is recorded whole


async def test_in_place_edits_are_recorded_as_json_patch_ops(db_path, make_worker) -> None:
    async with make_worker([EveryEdit]):
        handle = await EveryEdit.start({}, workflow_id="every")
        result = await handle.result(timeout=20)
    expected_xs = [{"k": [True]}, 3, [0, 1], 4]
    assert result == {
        "xs": sorted(expected_xs, key=str),
        "d": {"a/b": 10, "t~": 3, "new": ["x"]},
    }
    events = await get_store().list_events("every")
    patches = [e.payload["patch"] for e in events if e.kind is EventKind.STATE_PATCH]
    assert patches[0] == [
        {"op": "add", "path": "/xs/-", "value": [0]},
        {"op": "add", "path": "/xs/0", "value": 9},
        {"op": "add", "path": "/xs/3/-", "value": 1},
        {"op": "add", "path": "/xs/-", "value": 4},
        {"op": "add", "path": "/xs/-", "value": 5},
        {"op": "remove", "path": "/xs/5"},
        {"op": "remove", "path": "/xs/2"},
        {"op": "replace", "path": "/xs/0", "value": {"k": []}},
        {"op": "add", "path": "/xs/0/k/-", "value": True},
        {"op": "replace", "path": "/d/a~1b", "value": 10},
        {"op": "replace", "path": "/d/t~0", "value": 3},
        {"op": "add", "path": "/d/new", "value": []},
        {"op": "add", "path": "/d/new/-", "value": "x"},
        {"op": "add", "path": "/d/z", "value": None},
        {"op": "remove", "path": "/d/z"},
    ]
    assert patches[1] == [{"op": "replace", "path": "/xs", "value": sorted(expected_xs, key=str)}]
    assert not [e for e in events if e.kind is EventKind.STATE_UPDATE]
    # Folding the history (what readers do past the stored snapshot) gives the same state.
    assert fold_state({}, events) == result


@loom.workflow(name="Agent")
class Agent(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
    """The README's agent pattern: one result appended to the state per step."""

    @loom.step
    async def run(self, ctx):  # type: ignore[no-untyped-def]
        ctx.state.results = []
        for i in range(int(ctx.input["steps"])):
            ctx.state.results.append({"step": i, "text": "r" * 150})
            await ctx.sleep(0)
        ctx.state.done = await ctx.wait_for_signal("finish")


async def test_each_step_records_its_change_and_readers_see_the_current_state(
    db_path, make_worker
) -> None:
    steps = 120
    async with make_worker([Agent]):
        handle = await Agent.start({"steps": steps}, workflow_id="agent")
        state: dict[str, Any] = {}
        for _ in range(2000):  # readiness: the workflow waits for the signal after its steps
            state = await handle.state()
            if len(state.get("results", ())) == steps:
                break
            await __import__("asyncio").sleep(0.01)
        assert [r["step"] for r in state["results"]] == list(range(steps))
        if not is_postgres(db_path):
            # The stored snapshot is behind (not rewritten every step); reads fold the rest.
            with sqlite3.connect(db_path) as raw:
                (through,) = raw.execute(
                    "SELECT state_through FROM workflows WHERE workflow_id = 'agent'"
                ).fetchone()
            assert through is not None
        await handle.signal("finish", True)
        result = await handle.result(timeout=20)
    assert len(result["results"]) == steps and result["done"] is True
    assert await handle.state() == result
    events = await get_store().list_events("agent")
    sizes = [len(str(e.payload["patch"])) for e in events if e.kind is EventKind.STATE_PATCH]
    assert len(sizes) == steps
    # Every step's event is its own ~200 B, not the whole (growing) list.
    assert max(sizes) < 400


def test_golden_history_from_before_patches_replays() -> None:
    run = WorkflowRun(NestedEdits.compile(), "golden-nested")
    run.apply(read_history(HISTORIES / "nested_whole_value.json").events)
    assert run.failure is None
    activation = run.take_activation()
    assert activation.status is loom.WorkflowStatus.COMPLETED
    assert activation.state == NESTED_RESULT
    assert [e.kind for e in activation.events] == [EventKind.WORKFLOW_COMPLETED]


async def test_a_history_with_patches_replays_cold(db_path, make_worker) -> None:
    async with make_worker([NestedEdits]):
        handle = await NestedEdits.start({}, workflow_id="nested")
        assert await handle.result(timeout=20) == NESTED_RESULT
    events = await get_store().list_events("nested")
    assert [e.kind for e in events].count(EventKind.STATE_PATCH) == 4
    run = WorkflowRun(NestedEdits.compile(), "nested")
    run.apply(events)
    assert run.failure is None
    activation = run.take_activation()
    assert activation.state == NESTED_RESULT
    assert [e.kind for e in activation.events] == [EventKind.WORKFLOW_COMPLETED]


def test_replay_names_a_patch_of_another_field_as_non_determinism() -> None:
    @loom.workflow(name="NestedEdits")
    class Other(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
        @loom.step(name="edit")
        async def edit(self, ctx):  # type: ignore[no-untyped-def]
            ctx.state.items = []
            ctx.state.meta = {"n": 0}
            ctx.state.meta["m"] = 1  # the recorded code edited items here
            await ctx.sleep(0)

    try:
        run = WorkflowRun(Other.compile(), "golden-nested")
        run.apply(read_history(HISTORIES / "nested_whole_value.json").events)
    finally:
        NestedEdits.__loom_compiled__ = None
        NestedEdits.compile()
    assert isinstance(run.failure, loom.NonDeterministicWorkflowError)
    assert run.failure.expected == "STATE_UPDATE items,meta"
    assert run.failure.actual == "STATE_UPDATE meta"


@loom.workflow(name="Detached")
class Detached(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
    @loom.step
    async def edit(self, ctx):  # type: ignore[no-untyped-def]
        ctx.state.items = ["a"]
        kept = ctx.state.items
        ctx.state.items = ["new"]
        kept.append("lost")  # no longer part of the state
        ctx.state.copy = ctx.state.items  # a copy, not the same list twice
        ctx.state.copy.append("only in copy")
        await ctx.sleep(0)


async def test_a_value_taken_out_of_the_state_no_longer_edits_it(db_path, make_worker) -> None:
    async with make_worker([Detached]):
        handle = await Detached.start({}, workflow_id="detached")
        result = await handle.result(timeout=20)
    assert result == {"items": ["new"], "copy": ["new", "only in copy"]}
    events = await get_store().list_events("detached")
    assert fold_state({}, events) == result
    assert "lost" not in str([e.payload for e in events])


@loom.workflow(name="BadNested")
class BadNested(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
    @loom.step
    async def edit(self, ctx):  # type: ignore[no-untyped-def]
        ctx.state.items = [{"ok": 1}]
        ctx.state.items[0]["when"] = object()


async def test_a_nested_value_json_cannot_hold_fails_naming_its_path(db_path, make_worker) -> None:
    async with make_worker([BadNested]):
        handle = await BadNested.start({}, workflow_id="bad")
        with pytest.raises(loom.WorkflowExecutionError) as info:
            await handle.result(timeout=20)
    assert info.value.error_type == "StateSerializationError"
    assert "items/0/when" in str(info.value)


def test_copies_of_tracked_values_are_plain_json() -> None:
    class Sink:
        def __init__(self) -> None:
            self.data: dict[str, Any] = {}
            self.ops: list[dict[str, Any]] = []

        def note_patch(self, key: str, op: dict[str, Any]) -> None:
            self.ops.append(op)

    sink = Sink()
    from loom._patch import adopt

    sink.data["x"] = adopt({"l": [1, {"m": 2}]}, sink, "x")
    tracked = sink.data["x"]
    assert isinstance(tracked, TrackedDict) and isinstance(tracked["l"], TrackedList)
    for clone in (copy.deepcopy(tracked), pickle.loads(pickle.dumps(tracked))):
        assert clone == {"l": [1, {"m": 2}]}
        assert type(clone) is dict and type(clone["l"]) is list
        clone["l"].append(3)  # edits of a copy are not edits of the state
    assert sink.ops == []
    tracked["l"][1]["m"] = 3
    assert sink.ops == [{"op": "replace", "path": "/x/l/1/m", "value": 3}]
