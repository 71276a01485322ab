"""Store-level fencing on both backends, as two processes see it (a second store instance on
the same database), plus what only PostgreSQL does: NOTIFY between stores, pool sizing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from loom.activation import ACTIVITY_TASK, Activation, TaskSpec
from loom.exceptions import WorkflowClosedError
from loom.history import EventKind, NewEvent, WorkflowStatus
from loom.postgres_store import MAX_POOL_SIZE, PostgresStore
from loom.sqlite_store import SQLiteStore
from loom.store import ClaimedTask, CommitResult, NewWorkflow, Store
from tests.conftest import POSTGRES_URL, is_postgres, run_sql


def _spec(workflow_id: str) -> NewWorkflow:
    return NewWorkflow(
        workflow_id=workflow_id,
        workflow_name="Fenced",
        workflow_version="1",
        input={},
        state={},
        source_hash="h",
        total_steps=1,
        seed=1,
    )


def _schedule(workflow_id: str, seq: int = 2) -> Activation:
    """The activation a run produces when it calls one activity."""
    payload = {"seq": seq, "name": "act", "input": []}
    return Activation(
        events=[NewEvent(EventKind.ACTIVITY_SCHEDULED, payload)],
        tasks=[TaskSpec(f"a:{workflow_id}:{seq}", ACTIVITY_TASK, payload, 0)],
        state={"step": 1},
    )


def _done() -> Activation:
    return Activation(
        events=[NewEvent(EventKind.WORKFLOW_COMPLETED, {})],
        status=WorkflowStatus.COMPLETED,
        state={"done": True},
    )


def _no_cache(workflow_id: str) -> None:
    return None


@pytest.fixture
async def other(db_path: Path | str) -> AsyncIterator[Store]:
    """A second store on the same database: another worker process, as far as locks go."""
    second: Store = PostgresStore(str(db_path)) if is_postgres(db_path) else SQLiteStore(db_path)
    yield second
    await second.close()


async def _claim_one(store: Store, owner: str, lease_ms: int = 5_000) -> ClaimedTask:
    [task] = await store.claim_tasks(owner, 10, lease_ms, _no_cache)
    return task


async def test_concurrent_claims_take_disjoint_tasks(store: Store, other: Store) -> None:
    for n in range(60):
        await store.create_workflow(_spec(f"w{n}"))
    first, second = await asyncio.gather(
        store.claim_tasks("a", 40, 5_000, _no_cache), other.claim_tasks("b", 40, 5_000, _no_cache)
    )
    ids_a = {task.workflow_id for task in first}
    ids_b = {task.workflow_id for task in second}
    assert not ids_a & ids_b
    assert ids_a | ids_b == {f"w{n}" for n in range(60)}
    assert await store.count_tasks() == {"leased": 60, "expired": 0, "queued": 0}


async def test_a_lost_lease_commits_nothing(store: Store, other: Store) -> None:
    await store.create_workflow(_spec("w"))
    stale = await _claim_one(store, "a", lease_ms=1)
    await asyncio.sleep(0.01)
    fresh = await _claim_one(other, "b")  # the expired lease is taken over
    assert (fresh.task_id, fresh.attempt) == (stale.task_id, 2)

    lost = await store.commit_workflow_task(stale, _schedule("w"), 1, None)
    assert lost.is_committed is False
    assert [e.kind for e in await store.list_events("w")] == [EventKind.WORKFLOW_STARTED]
    assert await store.count_tasks() == {"leased": 1, "expired": 0, "queued": 0}

    won = await other.commit_workflow_task(fresh, _schedule("w"), 1, None)
    assert won.is_committed is True and won.last_sequence == 2
    record = await store.get_workflow("w")
    assert record is not None and record.state == {"step": 1} and record.epoch == 1


async def test_complete_and_continue_records_only_the_result_when_history_moved(
    store: Store,
) -> None:
    await store.create_workflow(_spec("w"))
    task = await _claim_one(store, "a")
    committed = await store.commit_workflow_task(
        task, _schedule("w"), 1, None, eager_lease_ms=5_000
    )
    [activity] = committed.tasks
    await store.signal_workflow("w", "go", {"x": 1})  # lands while the activity runs

    result = NewEvent(EventKind.ACTIVITY_COMPLETED, {"seq": 2, "name": "act", "result": 3})
    expected = (committed.last_sequence, committed.epoch)
    done = await store.complete_and_continue(
        activity, result, expected, _done(), None, at=1, eager_lease_ms=5_000
    )
    assert (done.is_committed, done.is_recorded) == (False, True)
    kinds = [e.kind for e in await store.list_events("w")]
    assert kinds[-2:] == [EventKind.SIGNAL_RECEIVED, EventKind.ACTIVITY_COMPLETED]
    record = await store.get_workflow("w")
    assert record is not None and record.status is WorkflowStatus.RUNNING
    assert await store.count_tasks() == {"leased": 0, "expired": 0, "queued": 1}


async def test_complete_and_continue_commits_both_when_nothing_happened(store: Store) -> None:
    await store.create_workflow(_spec("w"))
    task = await _claim_one(store, "a")
    committed = await store.commit_workflow_task(
        task, _schedule("w"), 1, None, eager_lease_ms=5_000
    )
    [activity] = committed.tasks
    result = NewEvent(EventKind.ACTIVITY_COMPLETED, {"seq": 2, "name": "act", "result": 3})
    expected = (committed.last_sequence, committed.epoch)
    done = await store.complete_and_continue(activity, result, expected, _done(), None, at=1)
    assert (done.is_committed, done.is_recorded) == (True, True)
    kinds = [e.kind for e in await store.list_events("w")]
    assert kinds[-2:] == [EventKind.ACTIVITY_COMPLETED, EventKind.WORKFLOW_COMPLETED]
    record = await store.get_workflow("w")
    assert record is not None and record.status is WorkflowStatus.COMPLETED
    assert await store.count_tasks() == {"leased": 0, "expired": 0, "queued": 0}


async def test_a_reclaimed_activity_result_is_recorded_once(store: Store, other: Store) -> None:
    await store.create_workflow(_spec("w"))
    task = await _claim_one(store, "a")
    committed = await store.commit_workflow_task(task, _schedule("w"), 1, None)
    assert committed.is_committed and not committed.tasks
    stale = await _claim_one(store, "a", lease_ms=1)
    await asyncio.sleep(0.01)
    fresh = await _claim_one(other, "b")
    assert fresh.task_id == stale.task_id

    result = NewEvent(EventKind.ACTIVITY_COMPLETED, {"seq": 2, "name": "act", "result": 3})
    expected = (committed.last_sequence, committed.epoch)
    lost = await store.complete_and_continue(stale, result, expected, _done(), None, at=1)
    assert (lost.is_committed, lost.is_recorded) == (False, False)
    late = await store.complete_activity(stale, result.kind, result.payload)
    assert late.is_recorded is False
    recorded = await other.complete_activity(fresh, result.kind, result.payload)
    assert recorded.is_recorded is True
    kinds = [e.kind for e in await store.list_events("w")]
    assert kinds.count(EventKind.ACTIVITY_COMPLETED) == 1


async def test_notify_wakes_workers_of_another_store(store: Store, other: Store) -> None:
    if not isinstance(store, PostgresStore):
        pytest.skip("PostgreSQL only: SQLite wakes its own process and polls across processes")
    woken = asyncio.Event()
    unsubscribe = other.wakeups.on_tasks(woken.set)
    try:
        await store.create_workflow(_spec("w"))
        await asyncio.wait_for(woken.wait(), 10)
    finally:
        unsubscribe()


async def test_reserve_sizes_the_pool_from_the_worker_concurrency(store: Store) -> None:
    if not isinstance(store, PostgresStore):
        pytest.skip("PostgreSQL only: SQLite has one writer connection")
    await store.reserve(6)
    assert store.pool_size == 8
    await store.reserve(1000)
    assert store.pool_size == MAX_POOL_SIZE
    await store.reserve(2)  # never shrinks under running operations
    assert store.pool_size == MAX_POOL_SIZE
    assert (await store.count_tasks())["queued"] == 0


async def test_a_close_resolves_waiters_of_another_store(store: Store, other: Store) -> None:
    if not isinstance(store, PostgresStore):
        pytest.skip("PostgreSQL only: across SQLite processes handles poll")
    await store.create_workflow(_spec("w"))
    waiting = other.wakeups.closed_future("w")
    task = await _claim_one(store, "a")
    assert (await store.commit_workflow_task(task, _done(), 1, None)).is_committed
    assert await asyncio.wait_for(waiting, 10) is None  # the handle then reads the row


async def test_a_lost_listener_reconnects(store: Store, other: Store) -> None:
    if not isinstance(other, PostgresStore):
        pytest.skip("PostgreSQL only")
    woken = asyncio.Event()
    unsubscribe = other.wakeups.on_tasks(woken.set)
    try:
        pid = other._db._listener_pid  # the LISTEN connection's server process
        run_sql(POSTGRES_URL, f"SELECT pg_terminate_backend({pid})")
        await asyncio.wait_for(woken.wait(), 10)  # the catch-up claim after reconnecting
        woken.clear()
        await store.create_workflow(_spec("w"))
        await asyncio.wait_for(woken.wait(), 10)
        assert other._db._listener_pid != pid
    finally:
        unsubscribe()


async def test_a_failing_member_of_a_group_commit_neither_fails_nor_loses_the_others(
    store: Store, other: Store
) -> None:
    """Transactions submitted together commit as one batch on both backends: one that rolls
    back (a lost lease) and one that raises (a signal to a closed workflow) keep their own
    outcomes, and every other member still commits."""
    await store.create_workflow(_spec("closed"))
    assert (
        await store.commit_workflow_task(await _claim_one(store, "a"), _done(), 1, None)
    ).is_committed
    await store.create_workflow(_spec("stale"))
    stale = await _claim_one(store, "a", lease_ms=1)
    await asyncio.sleep(0.01)
    assert (await _claim_one(other, "b")).attempt == 2  # the expired lease is taken over
    for n in range(4):
        await store.create_workflow(_spec(f"w{n}"))

    outcomes = await asyncio.gather(
        store.signal_workflow("w0", "go", 0),
        store.commit_workflow_task(stale, _schedule("stale"), 1, None),
        store.signal_workflow("w1", "go", 1),
        store.signal_workflow("closed", "go", None),
        store.signal_workflow("w2", "go", 2),
        store.signal_workflow("w3", "go", 3),
        return_exceptions=True,
    )

    assert isinstance(outcomes[1], CommitResult) and not outcomes[1].is_committed
    assert isinstance(outcomes[3], WorkflowClosedError)
    assert [outcomes[i] for i in (0, 2, 4, 5)] == [None] * 4
    assert [e.kind for e in await store.list_events("stale")] == [EventKind.WORKFLOW_STARTED]
    for n in range(4):
        signals = [
            e.payload
            for e in await store.list_events(f"w{n}")
            if e.kind is EventKind.SIGNAL_RECEIVED
        ]
        assert signals == [{"name": "go", "payload": n}]
