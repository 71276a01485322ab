"""Handles waiting on closes made by another process (a second store on the database): SQLite
numbers its closes, so a poll reads the closes since the last one seen, and nothing at all
while no other connection committed; PostgreSQL's stores push closes instead."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from loom import client
from loom.client import WorkflowHandle
from loom.exceptions import WorkflowNotFoundError, WorkflowStillRunningError
from loom.postgres_store import PostgresStore
from loom.sqlite_store import SQLiteConnection, SQLiteStore
from loom.store import Store
from tests.conftest import is_postgres
from tests.loom.test_postgres_store import _claim_one, _done, _spec


@pytest.fixture
async def other(db_path: Path | str) -> AsyncIterator[Store]:
    """A second store on the same database: another process, as far as closes go."""
    second: Store = PostgresStore(str(db_path)) if is_postgres(db_path) else SQLiteStore(db_path)
    yield second
    await second.close()


async def _close(store: Store, workflow_id: str) -> None:
    """Complete `workflow_id`, the one workflow of the database with a task."""
    task = await _claim_one(store, "closer")
    assert task.workflow_id == workflow_id
    assert (await store.commit_workflow_task(task, _done(), 1, None)).is_committed


async def trace(store: SQLiteStore) -> list[str]:
    """Every statement the store's writer connection runs from now on."""
    statements: list[str] = []

    async def install(conn: SQLiteConnection) -> None:
        conn._conn.set_trace_callback(statements.append)

    await store._writer.submit(install, (), False)
    statements.clear()  # the installing transaction's COMMIT
    return statements


def _sqlite_only(store: Store) -> SQLiteStore:
    if not isinstance(store, SQLiteStore):
        pytest.skip("SQLite only: PostgreSQL pushes closes over NOTIFY")
    return store


async def test_closes_are_numbered_in_commit_order(store: Store, other: Store) -> None:
    reader = _sqlite_only(other)
    start = await reader.closed_since(None, None, 0)
    assert start.workflow_ids == [] and start.is_complete
    for workflow_id in ("a", "b"):
        await store.create_workflow(_spec(workflow_id))
        await _close(store, workflow_id)
    scan = await reader.closed_since(start.mark, start.version, 10)
    assert scan.workflow_ids == ["a", "b"] and scan.mark == start.mark + 2
    await store.create_workflow(_spec("c"))
    await _close(store, "c")
    cut = await reader.closed_since(scan.mark, scan.version, 1)
    assert cut.workflow_ids == ["c"] and cut.is_complete is False and cut.version is None
    rest = await reader.closed_since(cut.mark, cut.version, 1)
    assert rest.workflow_ids == [] and rest.is_complete and rest.mark == cut.mark


async def test_a_scan_reads_no_rows_while_no_other_connection_committed(
    store: Store, other: Store
) -> None:
    reader = _sqlite_only(other)
    await store.create_workflow(_spec("a"))
    scan = await reader.closed_since(None, None, 0)
    statements = await trace(reader)
    again = await reader.closed_since(scan.mark, scan.version, 10)
    assert statements == ["BEGIN", "PRAGMA data_version", "COMMIT"]
    assert (again.mark, again.version, again.workflow_ids) == (scan.mark, scan.version, [])
    await _close(store, "a")  # another connection commits: the next scan reads the index
    statements.clear()
    found = await reader.closed_since(again.mark, again.version, 10)
    assert found.workflow_ids == ["a"]
    assert len(statements) == 4 and "WHERE closed_seq > " in statements[2]


async def test_cancelling_a_suspended_workflow_numbers_its_close(
    store: Store, other: Store
) -> None:
    reader = _sqlite_only(other)
    await store.create_workflow(_spec("s"))
    assert await store.suspend_workflow("s", {"type": "Operator", "message": "parked"})
    start = await reader.closed_since(None, None, 0)
    await store.cancel_workflow("s", "no longer wanted")
    scan = await reader.closed_since(start.mark, start.version, 10)
    assert scan.workflow_ids == ["s"]


async def test_postgres_does_not_number_closes(store: Store) -> None:
    if not isinstance(store, PostgresStore):
        pytest.skip("PostgreSQL only")
    assert store.is_numbering_closes is False
    with pytest.raises(ValueError, match="does not number closes"):
        await store.closed_since(None, None, 0)


async def test_a_handle_is_woken_by_a_close_in_another_store(store: Store, other: Store) -> None:
    await store.create_workflow(_spec("w"))
    waiting = asyncio.create_task(WorkflowHandle("w", other).result(timeout=20))
    await _until(lambda: "w" in client._watcher(other)._waiting)
    await _close(store, "w")
    assert await waiting == {"done": True}


@pytest.mark.parametrize("when", ["before the status read", "after the status read"])
async def test_a_close_around_the_status_read_is_not_missed(
    store: Store, other: Store, monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    await store.create_workflow(_spec("w"))
    read = other.get_statuses

    async def racing(workflow_ids: Any) -> Any:
        if when == "before the status read":
            await _close(store, "w")
        statuses = await read(workflow_ids)
        if when == "after the status read":
            await _close(store, "w")
        return statuses

    monkeypatch.setattr(other, "get_statuses", racing)
    assert await WorkflowHandle("w", other).result(timeout=20) == {"done": True}


async def test_timeouts_and_cancels_leave_no_waiter_behind(store: Store, other: Store) -> None:
    for workflow_id in ("t", "c"):
        await store.create_workflow(_spec(workflow_id))
    with pytest.raises(WorkflowStillRunningError):
        await WorkflowHandle("t", other).result(timeout=0.2)
    waiting = asyncio.create_task(WorkflowHandle("c", other).result())
    watcher = client._watcher(other)
    await _until(lambda: "c" in watcher._waiting)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert watcher._waiting == {}
    with pytest.raises(WorkflowNotFoundError):
        await WorkflowHandle("missing", other).result(timeout=1)
    assert watcher._waiting == {}


async def _until(condition: Callable[[], bool], timeout: float = 20) -> None:
    """Yield to the loop until `condition` holds (the waiter registered)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition never held"
        await asyncio.sleep(0)
