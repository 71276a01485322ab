"""The worker against a real SQLite file: activities, retries, timers, signals, children,
cancellation, idempotency, leases and fencing. Each scenario also runs with a zero-size
workflow cache, so every activation is a cold replay of the stored history."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

import loom
from loom.client import get_store
from loom.history import EventKind

CACHE_SIZES = [pytest.param(10_000, id="cached"), pytest.param(0, id="replay-always")]

calls: list[tuple[str, int]] = []
flaky_attempts: dict[str, int] = {}


@loom.activity(retry=3, timeout=5)
async def double(value: int) -> int:
    calls.append(("double", value))
    return value * 2


@loom.activity(retry=3, timeout=5, initial_interval=0.01)
async def flaky(key: str) -> str:
    flaky_attempts[key] = flaky_attempts.get(key, 0) + 1
    if flaky_attempts[key] < 3:
        raise ConnectionError(f"attempt {flaky_attempts[key]} failed")
    return f"{key} ok after {flaky_attempts[key]}"


@loom.activity(retry=5, timeout=5, non_retryable=(ValueError,))
async def picky(value: int) -> int:
    raise ValueError(f"{value} is not acceptable")


@loom.activity(retry=2, timeout=0.05, initial_interval=0.01)
async def slow() -> str:
    await asyncio.sleep(1)
    return "too late"


@dataclass
class CalcState:
    results: list[int] = field(default_factory=list)
    parallel: list[int] = field(default_factory=list)
    marks: list[str] = field(default_factory=list)


@loom.workflow(name="Calc")
class Calc(loom.Workflow[dict, CalcState]):  # type: ignore[type-arg]
    @loom.step
    async def sequential(self, ctx):  # type: ignore[no-untyped-def]
        for value in ctx.input["values"]:
            ctx.state.results = [*ctx.state.results, await ctx.activity(double, value)]

    @loom.step
    async def parallel(self, ctx):  # type: ignore[no-untyped-def]
        ctx.state.parallel = list(
            await asyncio.gather(*(ctx.activity(double, v) for v in ctx.input["values"]))
        )
        ctx.state.marks = [str(ctx.uuid4()), str(ctx.random()), ctx.now().isoformat()]


@pytest.mark.parametrize("cache", CACHE_SIZES)
async def test_repeated_activity_gets_each_calls_arguments(db_path, make_worker, cache) -> None:
    calls.clear()
    async with make_worker([Calc], [double], max_cached_workflows=cache):
        handle = await Calc.start({"values": [1, 2, 3, 4]})
        state = await handle.result(timeout=10)
    assert state.results == [2, 4, 6, 8]
    assert state.parallel == [2, 4, 6, 8]
    assert sorted(v for _, v in calls) == [1, 1, 2, 2, 3, 3, 4, 4]
    events = await get_store().list_events(handle.workflow_id)
    completed = [e.payload["seq"] for e in events if e.kind is EventKind.ACTIVITY_COMPLETED]
    assert len(completed) == len(set(completed)) == 8


async def test_deterministic_helpers_survive_replay(db_path, make_worker) -> None:
    async with make_worker([Calc], [double], max_cached_workflows=0):
        handle = await Calc.start({"values": [5]})
        state = await handle.result(timeout=10)
    assert len(state.marks) == 3
    # A cold replay of the finished history computes the same values.
    from loom.replay import WorkflowRun

    run = WorkflowRun(Calc.compile(), handle.workflow_id)
    run.apply(await get_store().list_events(handle.workflow_id))
    assert run.failure is None
    assert run.state_data["marks"] == state.marks


@loom.workflow(name="Retries")
class Retries(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
    @loom.step
    async def run(self, ctx):  # type: ignore[no-untyped-def]
        ctx.state.flaky = await ctx.activity(flaky, ctx.input["key"])
        try:
            await ctx.activity(picky, 7)
        except loom.ActivityFailedError as err:
            ctx.state.caught = [err.activity_name, err.error_type, err.attempt]
        try:
            await ctx.activity(slow)
        except loom.ActivityFailedError as err:
            ctx.state.timeout = [err.error_type, err.attempt]
        await ctx.activity(picky, 8)  # uncaught: fails the workflow


@pytest.mark.parametrize("cache", CACHE_SIZES)
async def test_retries_non_retryable_and_timeouts(db_path, make_worker, cache) -> None:
    key = f"k-{cache}"
    flaky_attempts.pop(key, None)  # each backend's leg counts from zero
    async with make_worker([Retries], [flaky, picky, slow], max_cached_workflows=cache):
        handle = await Retries.start({"key": key})
        with pytest.raises(loom.ActivityFailedError) as info:
            await handle.result(timeout=10)
    assert info.value.activity_name == "picky"
    assert "8 is not acceptable" in info.value.error_message
    state = await handle.state()
    assert state["flaky"] == f"{key} ok after 3"
    assert state["caught"] == ["picky", "ValueError", 1]
    assert state["timeout"] == ["ActivityTimeoutError", 2]
    assert await handle.status() is loom.WorkflowStatus.FAILED
    logs = await get_store().list_logs(handle.workflow_id)
    assert sum("retrying in" in message for _, _, message in logs) == 3


@loom.workflow(name="Signals")
class Signals(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
    @loom.step
    async def wait(self, ctx):  # type: ignore[no-untyped-def]
        await ctx.sleep(0.05)
        first = await ctx.wait_for_signal("go")
        second = await ctx.wait_for_signal("go")
        try:
            await ctx.wait_for_signal("never", timeout=0.05)
        except TimeoutError:
            ctx.state.timed_out = True
        ctx.state.payloads = [first, second]


@pytest.mark.parametrize("cache", CACHE_SIZES)
async def test_signals_are_buffered_and_ordered(db_path, make_worker, cache) -> None:
    handle = await Signals.start({})
    # Both signals arrive before any worker runs: they are buffered in history.
    await handle.signal("go", {"n": 1})
    await handle.signal("go", n=2)
    async with make_worker([Signals], max_cached_workflows=cache):
        assert await handle.result(timeout=10) == {
            "timed_out": True,
            "payloads": [{"n": 1}, {"n": 2}],
        }


async def test_signal_and_cancel_unknown_workflow(db_path) -> None:
    handle = loom.get_handle("nope")
    with pytest.raises(loom.WorkflowNotFoundError, match="'nope' not found"):
        await handle.signal("go")
    with pytest.raises(loom.WorkflowNotFoundError):
        await handle.status()
    with pytest.raises(loom.WorkflowNotFoundError):
        await handle.cancel()


async def test_signal_to_finished_workflow_is_refused(db_path, make_worker) -> None:
    async with make_worker([Calc], [double]):
        handle = await Calc.start({"values": []})
        await handle.result(timeout=10)
    with pytest.raises(loom.WorkflowClosedError, match="is COMPLETED"):
        await handle.signal("late")


@loom.workflow(name="Child")
class Child(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
    @loom.step
    async def work(self, ctx):  # type: ignore[no-untyped-def]
        if ctx.input.get("fail"):
            raise RuntimeError(f"child {ctx.input['n']} broke")
        ctx.state.value = await ctx.activity(double, ctx.input["n"])


@loom.workflow(name="Parent")
class Parent(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
    @loom.step
    async def spawn(self, ctx):  # type: ignore[no-untyped-def]
        children = [ctx.start_workflow(Child, {"n": n}) for n in (1, 2, 3)]
        ctx.state.values = [(await child)["value"] for child in children]
        try:
            await ctx.start_workflow(Child, {"n": 4, "fail": True}, workflow_id="bad-child")
        except loom.WorkflowExecutionError as err:
            ctx.state.child_error = [err.workflow_id, err.error_type, err.error_message]


@pytest.mark.parametrize("cache", CACHE_SIZES)
async def test_child_workflows(db_path, make_worker, cache) -> None:
    async with make_worker([Parent, Child], [double], max_cached_workflows=cache):
        handle = await Parent.start({})
        state = await handle.result(timeout=10)
    assert state["values"] == [2, 4, 6]
    assert state["child_error"] == ["bad-child", "RuntimeError", "child 4 broke"]
    assert await loom.get_handle("bad-child").status() is loom.WorkflowStatus.FAILED


async def test_child_workflows_locally() -> None:
    state = await Parent.compile().execute({})
    assert state["values"] == [2, 4, 6]
    assert state["child_error"][1:] == ["RuntimeError", "child 4 broke"]


@loom.workflow(name="Cancellable")
class Cancellable(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
    @loom.step
    async def wait(self, ctx):  # type: ignore[no-untyped-def]
        child = ctx.start_workflow(Signals, {}, workflow_id=f"{ctx.workflow_id}-child")
        try:
            await ctx.wait_for_signal("never")
        except loom.WorkflowCancelledError:
            ctx.state.cleaned_up = True
            raise
        await child


@pytest.mark.parametrize("cache", CACHE_SIZES)
async def test_cancel(db_path, make_worker, cache) -> None:
    async with make_worker([Cancellable, Signals], max_cached_workflows=cache):
        handle = await Cancellable.start({}, workflow_id=f"cancel-{cache}")
        for _ in range(100):
            if await handle.status() is loom.WorkflowStatus.RUNNING:
                break
            await asyncio.sleep(0.02)
        await handle.cancel("user asked")
        with pytest.raises(loom.WorkflowCancelledError, match="user asked"):
            await handle.result(timeout=10)
        child = loom.get_handle(f"cancel-{cache}-child")
        with pytest.raises(loom.WorkflowCancelledError, match="parent workflow"):
            await child.result(timeout=10)
    assert await handle.status() is loom.WorkflowStatus.CANCELED
    assert (await handle.state())["cleaned_up"] is True
    await handle.cancel()  # cancelling a finished workflow is a no-op


async def test_workflow_id_is_an_idempotency_key(db_path, make_worker) -> None:
    first = await Calc.start({"values": [1]}, workflow_id="same")
    second = await Calc.start({"values": [2]}, workflow_id="same")
    assert first.workflow_id == second.workflow_id == "same"
    with pytest.raises(loom.WorkflowAlreadyExistsError, match="already belongs to a 'Calc'"):
        await Signals.start({}, workflow_id="same")
    async with make_worker([Calc], [double]):
        assert (await second.result(timeout=10)).results == [2]


async def test_unknown_activity_suspends_clearly_and_resumes_once_served(
    db_path, make_worker
) -> None:
    """A worker lacking an activity (and no other serving it) parks the workflow instead of
    failing it; a worker with the activity plus a resume finishes it."""
    async with make_worker([Calc], [], handbacks=1):
        handle = await Calc.start({"values": [1]})
        for _ in range(400):
            if await handle.status() is loom.WorkflowStatus.SUSPENDED:
                break
            await asyncio.sleep(0.05)
        with pytest.raises(loom.WorkflowStillRunningError, match="SUSPENDED"):
            await handle.result(timeout=0.2)
    record = await get_store().get_workflow(handle.workflow_id)
    assert record is not None and record.error is not None
    assert record.error["type"] == "ActivityNotFoundError"
    assert "activity 'double' not found" in record.error["message"]
    async with make_worker([Calc], [double]):
        assert await handle.resume() is True
        assert (await handle.result(timeout=20)).results == [2]


async def test_many_workflows_with_small_concurrency(db_path, make_worker) -> None:
    async with make_worker([Calc], [double], concurrency=3):
        handles = [await Calc.start({"values": [i, i + 1]}) for i in range(30)]
        states = await asyncio.gather(*(h.result(timeout=20) for h in handles))
    assert [s.results for s in states] == [[2 * i, 2 * i + 2] for i in range(30)]
    assert await get_store().count_tasks() == {"leased": 0, "expired": 0, "queued": 0}


async def test_a_task_that_fails_in_the_worker_is_given_back_not_held(
    db_path, make_worker, monkeypatch
) -> None:
    """A store error while processing (a full disk, a dropped connection) used to leave the
    task leased; the heartbeat renewed that lease for as long as the worker lived."""
    store = get_store(db_path)
    real_commit = store.commit_workflow_task
    failures = []

    async def fails_once(*args, **kwargs):  # type: ignore[no-untyped-def]
        if not failures:
            failures.append(1)
            raise OSError("the store went away for a moment")
        return await real_commit(*args, **kwargs)

    monkeypatch.setattr(store, "commit_workflow_task", fails_once)
    handle = await Calc.start({"values": [1]})  # before the worker: its task is claimed
    async with make_worker([Calc], [double], lease_seconds=60):
        # Far sooner than the 60 s lease: the failed claim was released with a short backoff.
        state = await handle.result(timeout=20)
    assert state.results == [2] and failures == [1]
    logs = [message for _, _, message in await store.list_logs(handle.workflow_id)]
    assert any("could not process task" in m and "went away" in m for m in logs), logs
