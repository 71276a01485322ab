"""The lost-workflow race: a run must never be rebuilt from a partial history.

A claim loads only the events after the cached run's cursor. If that run leaves the cache
before the task is advanced (the completion fast path took it, the worker re-claimed its own
expired lease, the LRU evicted it), the worker used to build a FRESH run from those few
events: it never saw WORKFLOW_STARTED, produced an empty activation, and the commit wrote the
initial state with `processed_sequence == last_sequence` — a workflow RUNNING forever with no
task and its state reset to `{}`. These tests build that interleaving deterministically, then
run the red team's pressure scenario (short leases, a stalling worker, parallel activities,
large state) and require every workflow to finish with the right state.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

import loom
from loom.history import Event, EventKind, WorkflowStatus
from loom.replay import HistoryGapError, WorkflowRun
from loom.store import Store

BIG = "x" * 50_000


@loom.workflow(name="ParkedBig")
class ParkedBig(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
    @loom.step
    async def run(self, ctx):  # type: ignore[no-untyped-def]
        ctx.state.big = BIG
        ctx.state.before = ctx.input["n"]
        payload = await ctx.wait_for_signal("go")
        ctx.state.after = payload["n"]


async def _claim_one(store: Store, worker: loom.Worker, kind: str = "workflow") -> Any:
    for _ in range(200):
        tasks = await store.claim_tasks(worker.worker_id, 10, 30_000, worker._cursor_of)
        if tasks:
            [task] = tasks
            assert task.kind == kind
            return task
        await asyncio.sleep(0.02)
    raise AssertionError("no task became claimable within 4 s")


@pytest.mark.parametrize("moved", ["evicted", "advanced-elsewhere"])
async def test_a_claim_whose_cached_run_left_the_cache_replays_the_full_history(
    store: Store, make_worker: Any, moved: str
) -> None:
    """Claim with the cache's cursor, lose the cached run, then advance: full replay."""
    worker = make_worker([ParkedBig])
    worker._store = store  # drive the worker's steps by hand; no claim loop runs
    handle = await ParkedBig.start({"n": 1})
    first = await _claim_one(store, worker)
    assert first.is_full_history
    await worker._advance(store, first)
    assert handle.workflow_id in worker._cache

    await handle.signal("go", {"n": 2})
    partial = await _claim_one(store, worker)
    assert not partial.is_full_history  # loaded after the cached run's cursor
    assert [e.kind for e in partial.events] == [EventKind.SIGNAL_RECEIVED]
    cached = worker._cache[handle.workflow_id]
    if moved == "evicted":
        worker._cache.pop(handle.workflow_id).close()
    else:
        cached.cursor += 1  # the cached run is not the one the claim's events continue
    await worker._advance(store, partial)

    record = await store.get_workflow(handle.workflow_id)
    assert record is not None
    assert record.status is WorkflowStatus.COMPLETED, record
    assert record.state == {"big": BIG, "before": 1, "after": 2}
    assert record.processed_sequence <= record.last_sequence


async def test_a_fresh_run_refuses_a_history_that_does_not_start_at_the_beginning(
    store: Store, make_worker: Any
) -> None:
    worker = make_worker([ParkedBig])
    worker._store = store
    handle = await ParkedBig.start({"n": 1})
    await worker._advance(store, await _claim_one(store, worker))
    await handle.signal("go", {"n": 2})
    events = await store.list_events(handle.workflow_id)
    run = WorkflowRun(ParkedBig.compile(), handle.workflow_id)
    with pytest.raises(HistoryGapError, match="sequence"):
        run.apply(events[-1:])
    run.close()
    # A run that has seen part of the history accepts only the very next event.
    run = WorkflowRun(ParkedBig.compile(), handle.workflow_id)
    run.apply(events[:2])
    with pytest.raises(HistoryGapError, match=r"after 2"):
        run.apply(events[3:], include_commands=False)
    run.close()
    gap = Event(10, EventKind.SIGNAL_RECEIVED, {"name": "go", "payload": {}}, 0)
    run = WorkflowRun(ParkedBig.compile(), handle.workflow_id)
    with pytest.raises(HistoryGapError):
        run.apply([gap])
    run.close()


async def test_a_stale_activation_cannot_move_the_workflow(store: Store, make_worker: Any) -> None:
    """Store fence: a task whose history view is older than the row's epoch commits nothing
    and is made due again at once, so the workflow is neither lost nor reset."""
    worker = make_worker([ParkedBig])
    worker._store = store
    handle = await ParkedBig.start({"n": 1})
    task = await _claim_one(store, worker)
    run = WorkflowRun(ParkedBig.compile(), handle.workflow_id)
    run.apply(task.events)
    activation = run.take_activation()
    run.close()
    assert task.workflow is not None
    task.workflow = type(task.workflow)(
        task.workflow.workflow_name,
        task.workflow.epoch + 7,
        task.workflow.processed_sequence,
        task.workflow.owner,
    )
    result = await store.commit_workflow_task(task, activation, run.cursor, None)
    assert not result.is_committed
    record = await store.get_workflow(handle.workflow_id)
    assert record is not None and record.epoch == 0 and record.last_sequence == 1
    # The task is due again: the worker's loop finishes the workflow normally.
    async with make_worker([ParkedBig]):
        await handle.signal("go", {"n": 3})
        state = await handle.result(timeout=20)
    assert state == {"big": BIG, "before": 1, "after": 3}


# -- the red team's scenario at test size -----------------------------------------------

stall_every = 7
stall_seconds = 0.9
calls = {"n": 0}


@loom.activity(retry=5, timeout=20)
async def part(index: int, size: int) -> str:
    calls["n"] += 1
    if calls["n"] % stall_every == 0:
        # Block the event loop past the lease: heartbeats stall, leases expire, and the
        # worker re-claims its own tasks while their first claims are still in flight.
        time.sleep(stall_seconds)
    await asyncio.sleep(0)
    return f"{index}:" + "y" * size


@loom.workflow(name="ParallelBig")
class ParallelBig(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
    @loom.step
    async def fan_out(self, ctx):  # type: ignore[no-untyped-def]
        ctx.state.blob = "z" * ctx.input["state_bytes"]
        size = ctx.input["result_bytes"]
        results = await asyncio.gather(*(ctx.activity(part, i, size) for i in range(3)))
        ctx.state.parts = [r.split(":")[0] for r in results]
        ctx.state.second = await ctx.activity(part, 9, 1)


async def _pressure(make_worker: Any, workflows: int, concurrency: int) -> None:
    calls["n"] = 0
    async with make_worker(
        [ParallelBig], [part], lease_seconds=0.5, concurrency=concurrency, poll_interval=0.05
    ):
        handles = [
            await ParallelBig.start({"state_bytes": 200_000, "result_bytes": 20_000})
            for _ in range(workflows)
        ]
        states = await asyncio.wait_for(
            asyncio.gather(*(h.result(timeout=240) for h in handles)), 250
        )
    for state in states:
        assert state["parts"] == ["0", "1", "2"]
        assert state["second"] == "9:y"
        assert len(state["blob"]) == 200_000


async def test_short_leases_and_a_stalling_worker_lose_no_workflow(make_worker: Any) -> None:
    await _pressure(make_worker, workflows=40, concurrency=16)


@pytest.mark.slow
async def test_short_leases_and_a_stalling_worker_lose_no_workflow_soak(make_worker: Any) -> None:
    for _ in range(5):
        await _pressure(make_worker, workflows=150, concurrency=64)


@loom.workflow(name="ParentOfParked")
class ParentOfParked(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
    @loom.step
    async def run(self, ctx):  # type: ignore[no-untyped-def]
        ctx.state.child = (await ctx.start_workflow(ParkedBig, {"n": 5}))["after"]


async def test_doctor_counts_a_parent_waiting_on_its_open_child_as_idle(
    store: Store, db_path: Any, make_worker: Any
) -> None:
    from tests.loom.test_cli import loom_cli

    worker = make_worker([ParentOfParked, ParkedBig])
    worker._store = store
    await ParentOfParked.start({})
    await worker._advance(store, await _claim_one(store, worker))  # starts the child
    await worker._advance(store, await _claim_one(store, worker))  # the child parks
    report = json.loads((await asyncio.to_thread(loom_cli, "doctor", "--json", db=db_path)).stdout)
    assert report["is_healthy"] is True, report
    assert report["idle_workflows"] == 2 and report["lost_workflows"] == []


async def test_doctor_reports_a_running_workflow_that_nothing_will_ever_move(
    store: Store, db_path: Any, make_worker: Any
) -> None:
    """Parked on a signal is idle (healthy); RUNNING with no task and no wait is lost."""
    from tests.loom.test_cli import execute_sql, loom_cli

    worker = make_worker([ParkedBig])
    worker._store = store
    handle = await ParkedBig.start({"n": 1})
    await worker._advance(store, await _claim_one(store, worker))
    workflow_id = handle.workflow_id

    def doctor(*flags: str) -> Any:
        return loom_cli("doctor", *flags, db=db_path)

    healthy = json.loads((await asyncio.to_thread(doctor, "--json")).stdout)
    assert healthy["is_healthy"] is True, healthy
    assert healthy["idle_workflows"] == 1 and healthy["lost_workflows"] == []

    # What the race left behind: processed everything, no task, and no wait in its history.
    await asyncio.to_thread(
        execute_sql, db_path, "DELETE FROM events WHERE kind = 'SIGNAL_WAIT_STARTED'"
    )
    sick = await asyncio.to_thread(doctor)
    assert sick.exit_code == 1
    assert "lost workflows: 1" in sick.stdout
    assert workflow_id in sick.stderr and "nothing to wait for" in sick.stderr
    report = json.loads((await asyncio.to_thread(doctor, "--json")).stdout)
    assert report["lost_workflows"] == [workflow_id] and report["idle_workflows"] == 0
