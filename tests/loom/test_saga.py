"""Sagas: compensations run newest first as durable activities, exactly once, and replay the
same; a failed compensation surfaces as CompensationError with both errors."""

from __future__ import annotations

import asyncio

import pytest

import loom
from loom.client import get_store
from loom.history import EventKind
from loom.replay import WorkflowRun

CACHE_SIZES = [pytest.param(10_000, id="cached"), pytest.param(0, id="replay-always")]
effects: list[str] = []
undo_attempts: dict[str, int] = {}


@loom.activity(retry=1, timeout=5)
async def book(item: str) -> str:
    if item == "boom":
        raise RuntimeError(f"cannot book {item}")
    effects.append(f"book {item}")
    return f"booking-{item}"


@loom.activity(retry=3, timeout=5, initial_interval=0.01)
async def unbook(booking: str) -> None:
    undo_attempts[booking] = undo_attempts.get(booking, 0) + 1
    if booking == "booking-flaky" and undo_attempts[booking] < 3:
        raise ConnectionError("flaky undo")
    if booking == "booking-broken":
        raise PermissionError(f"cannot undo {booking}")
    effects.append(f"unbook {booking}")


@loom.workflow(name="Trip")
class Trip(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
    @loom.step
    async def plan(self, ctx):  # type: ignore[no-untyped-def]
        async with ctx.saga(parallel=ctx.input.get("parallel", False)) as saga:
            for item in ctx.input["items"]:
                booking = await ctx.activity(book, item)
                saga.compensate(unbook, booking)
            if ctx.input.get("wait"):
                await ctx.wait_for_signal("go")
        ctx.state.done = True


@pytest.fixture(autouse=True)
def _reset() -> None:
    effects.clear()
    undo_attempts.clear()


@pytest.mark.parametrize("cache", CACHE_SIZES)
async def test_failure_compensates_in_reverse_order_once(db_path, make_worker, cache) -> None:
    async with make_worker([Trip], [book, unbook], max_cached_workflows=cache):
        handle = await Trip.start({"items": ["car", "flaky", "hotel", "boom"]})
        with pytest.raises(loom.ActivityFailedError) as info:
            await handle.result(timeout=30)
    assert info.value.activity_name == "book"  # the original error propagates
    assert "cannot book boom" in info.value.error_message
    assert effects == [
        "book car",
        "book flaky",
        "book hotel",
        "unbook booking-hotel",
        "unbook booking-flaky",
        "unbook booking-car",
    ]
    assert undo_attempts["booking-flaky"] == 3  # its retry policy applied
    events = await get_store().list_events(handle.workflow_id)
    undone = [
        e.payload["input"]
        for e in events
        if e.kind is EventKind.ACTIVITY_SCHEDULED and e.payload["name"] == "unbook"
    ]
    assert undone == [
        {"booking": "booking-hotel"},
        {"booking": "booking-flaky"},
        {"booking": "booking-car"},
    ]
    completed = [e for e in events if e.kind is EventKind.ACTIVITY_COMPLETED]
    assert len({e.payload["seq"] for e in completed}) == len(completed) == 6


async def test_success_runs_no_compensation(db_path, make_worker) -> None:
    async with make_worker([Trip], [book, unbook]):
        state = await (await Trip.start({"items": ["car", "hotel"]})).result(timeout=30)
    assert state == {"done": True}
    assert effects == ["book car", "book hotel"]


async def test_failed_compensation_raises_compensation_error(db_path, make_worker) -> None:
    async with make_worker([Trip], [book, unbook]):
        handle = await Trip.start({"items": ["car", "broken", "hotel", "boom"]})
        with pytest.raises(loom.WorkflowExecutionError) as info:
            await handle.result(timeout=30)
    assert info.value.error_type == "CompensationError"
    details = info.value.details
    assert details["original"]["type"] == "ActivityFailedError"
    assert "cannot book boom" in details["original"]["message"]
    assert details["failures"] == [
        {
            "type": "ActivityFailedError",
            "activity_name": "unbook",
            "message": "cannot undo booking-broken",
        }
    ]
    # The failing undo did not stop the one after it (after its own 3 attempts).
    assert effects[-2:] == ["unbook booking-hotel", "unbook booking-car"]
    assert undo_attempts["booking-broken"] == 3


async def test_local_execute_raises_compensation_error_with_both() -> None:
    @loom.workflow(name="TripLocal")
    class TripLocal(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
        @loom.step
        async def plan(self, ctx):  # type: ignore[no-untyped-def]
            try:
                async with ctx.saga() as saga:
                    saga.compensate(unbook, "booking-broken")
                    await ctx.activity(book, "boom")
            except loom.CompensationError as err:
                ctx.state.original = type(err.original).__name__
                ctx.state.failures = [f.activity_name for f in err.failures]

    state = await TripLocal.compile().execute({})
    assert state == {"original": "ActivityFailedError", "failures": ["unbook"]}


@pytest.mark.parametrize("cache", CACHE_SIZES)
async def test_parallel_compensations_run_together(db_path, make_worker, cache) -> None:
    async with make_worker([Trip], [book, unbook], max_cached_workflows=cache):
        handle = await Trip.start({"items": ["a", "b", "c", "boom"], "parallel": True})
        with pytest.raises(loom.ActivityFailedError):
            await handle.result(timeout=30)
    events = await get_store().list_events(handle.workflow_id)
    kinds = [(e.kind, e.payload.get("name")) for e in events]
    scheduled = [i for i, k in enumerate(kinds) if k == (EventKind.ACTIVITY_SCHEDULED, "unbook")]
    first_done = next(
        i for i, k in enumerate(kinds) if k == (EventKind.ACTIVITY_COMPLETED, "unbook")
    )
    assert len(scheduled) == 3
    assert max(scheduled) < first_done  # all three were scheduled before any completed
    assert sorted(effects[3:]) == ["unbook booking-a", "unbook booking-b", "unbook booking-c"]


@pytest.mark.parametrize("cache", CACHE_SIZES)
async def test_cancel_inside_saga_compensates_then_cancels(db_path, make_worker, cache) -> None:
    async with make_worker([Trip], [book, unbook], max_cached_workflows=cache):
        handle = await Trip.start({"items": ["car", "hotel"], "wait": True})
        store = get_store()
        while not any(
            e.kind is EventKind.SIGNAL_WAIT_STARTED
            for e in await store.list_events(handle.workflow_id)
        ):
            await asyncio.sleep(0.02)
        await handle.cancel("trip called off")
        with pytest.raises(loom.WorkflowCancelledError):
            await handle.result(timeout=30)
    assert await handle.status() is loom.WorkflowStatus.CANCELED
    assert effects == ["book car", "book hotel", "unbook booking-hotel", "unbook booking-car"]


async def test_saga_history_replays_without_new_commands(db_path, make_worker) -> None:
    async with make_worker([Trip], [book, unbook]):
        handle = await Trip.start({"items": ["car", "broken", "boom"]})
        with pytest.raises(loom.WorkflowExecutionError):
            await handle.result(timeout=30)
    events = await get_store().list_events(handle.workflow_id)
    run = WorkflowRun(Trip.compile(), handle.workflow_id, replay_until=events[-1].sequence)
    run.apply(events[:-1])  # everything but the recorded outcome
    assert run.failure is None
    activation = run.take_activation()
    assert [e.kind for e in activation.events] == [EventKind.WORKFLOW_FAILED]
    assert activation.error is not None and activation.error["type"] == "CompensationError"
    assert activation.tasks == []


def test_compensate_checks_arguments_at_registration() -> None:
    @loom.workflow(name="TripBadUndo")
    class TripBadUndo(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
        @loom.step
        async def plan(self, ctx):  # type: ignore[no-untyped-def]
            async with ctx.saga() as saga:
                saga.compensate(unbook, "a", "too many")

    with pytest.raises(loom.WorkflowExecutionError) as info:
        asyncio.run(TripBadUndo.compile().execute({}))
    assert info.value.error_type == "TypeError"


undo_gate: asyncio.Event | None = None


@loom.activity(retry=1, timeout=30)
async def slow_unbook(booking: str) -> None:
    assert undo_gate is not None
    effects.append(f"start unbook {booking}")
    await undo_gate.wait()
    effects.append(f"unbook {booking}")


@loom.workflow(name="SlowUndoTrip")
class SlowUndoTrip(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
    @loom.step
    async def plan(self, ctx):  # type: ignore[no-untyped-def]
        async with ctx.saga() as saga:
            for item in ("car", "hotel"):
                saga.compensate(slow_unbook, await ctx.activity(book, item))
            await ctx.activity(book, "boom")


async def test_cancel_during_compensation_waits_for_it(db_path, make_worker) -> None:
    global undo_gate
    undo_gate = asyncio.Event()
    async with make_worker([SlowUndoTrip], [book, slow_unbook]):
        handle = await SlowUndoTrip.start({})
        while "start unbook booking-hotel" not in effects:
            await asyncio.sleep(0.02)
        await handle.cancel("too late to stop the undo")
        undo_gate.set()
        with pytest.raises(loom.ActivityFailedError, match="cannot book boom"):
            await handle.result(timeout=30)
    assert effects[-3:] == [
        "unbook booking-hotel",
        "start unbook booking-car",
        "unbook booking-car",
    ]
