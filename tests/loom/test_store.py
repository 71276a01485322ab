"""Store operations on a real SQLite file: leases, reclaim after expiry, and fencing."""

from __future__ import annotations

import asyncio

import pytest

import loom
from loom.history import EventKind
from loom.replay import WorkflowRun
from loom.sqlite_store import SQLiteStore, connect
from loom.store import Store
from tests.loom.test_postgres_store import _spec
from tests.loom.test_worker import Calc

heartbeat_runs: list[int] = []


@loom.activity(retry=1, timeout=10)
async def outlives_lease(value: int) -> int:
    heartbeat_runs.append(value)
    await asyncio.sleep(1.5)
    return value


@loom.workflow(name="LongActivity")
class LongActivity(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
    @loom.step
    async def run(self, ctx):  # type: ignore[no-untyped-def]
        ctx.state.value = await ctx.activity(outlives_lease, 7)


async def _start(store: Store) -> str:
    handle = await Calc.start({"values": [1]})
    return handle.workflow_id


async def test_expired_lease_is_reclaimed_and_the_stale_holder_is_fenced(store) -> None:
    workflow_id = await _start(store)
    [first] = await store.claim_tasks("dead-worker", 10, 1_000, lambda _: None)
    assert first.workflow_id == workflow_id
    # While the lease holds nobody else gets the task (1 s: a busy machine may take 50 ms
    # between two claims).
    assert await store.claim_tasks("other", 10, 1_000, lambda _: None) == []
    await asyncio.sleep(1.1)
    [second] = await store.claim_tasks("live-worker", 10, 5_000, lambda _: None)
    assert second.task_id == first.task_id and second.attempt == first.attempt + 1

    run = WorkflowRun(Calc.compile(), workflow_id)
    assert first.events is not None
    run.apply(first.events)
    activation = run.take_activation()
    stale = await store.commit_workflow_task(first, activation, run.cursor, None)
    assert not stale.is_committed
    fresh = await store.commit_workflow_task(second, activation, run.cursor, None)
    assert fresh.is_committed
    kinds = [e.kind for e in await store.list_events(workflow_id)]
    assert kinds.count(EventKind.ACTIVITY_SCHEDULED) == 1


async def test_activity_result_is_recorded_once_under_a_lost_lease(store) -> None:
    workflow_id = await _start(store)
    [task] = await store.claim_tasks("w1", 10, 5_000, lambda _: None)
    run = WorkflowRun(Calc.compile(), workflow_id)
    assert task.events is not None
    run.apply(task.events)
    await store.commit_workflow_task(task, run.take_activation(), run.cursor, None)
    [activity] = await store.claim_tasks("w1", 10, 50, lambda _: None)
    await asyncio.sleep(0.1)
    [again] = await store.claim_tasks("w2", 10, 5_000, lambda _: None)
    payload = {"seq": activity.payload["seq"], "name": "double", "result": 2}
    late = await store.complete_activity(activity, EventKind.ACTIVITY_COMPLETED, payload)
    assert not late.is_recorded
    done = await store.complete_activity(again, EventKind.ACTIVITY_COMPLETED, payload)
    assert done.is_recorded
    kinds = [e.kind for e in await store.list_events(workflow_id)]
    assert kinds.count(EventKind.ACTIVITY_COMPLETED) == 1


async def test_heartbeat_keeps_a_long_activity_leased(db_path, make_worker) -> None:
    heartbeat_runs.clear()
    async with make_worker([LongActivity], [outlives_lease], lease_seconds=0.6):
        handle = await LongActivity.start({})
        assert await handle.result(timeout=20) == {"value": 7}
    assert heartbeat_runs == [7]  # never reclaimed and run a second time


async def test_a_write_waits_for_the_lock_another_process_holds(store: Store, db_path) -> None:
    if not isinstance(store, SQLiteStore):
        pytest.skip("SQLite only: one write lock per database")
    holder = connect(str(db_path))  # another process, as far as locks go
    holder.execute("BEGIN IMMEDIATE")
    try:
        creating = asyncio.create_task(store.create_workflow(_spec("late")))
        await asyncio.sleep(0.05)  # let the writer retry a few times against the lock
        assert not creating.done()
    finally:
        holder.execute("COMMIT")
        holder.close()
    _, created = await asyncio.wait_for(creating, 20)
    assert created
