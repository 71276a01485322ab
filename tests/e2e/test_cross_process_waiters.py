"""Handles in this process waiting on workflows a `loom worker` subprocess completes (SQLite):
each poll costs the same at 10 and at 200 waiters, and every handle gets its result."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from loom.client import get_store
from loom.sqlite_store import SQLiteConnection, SQLiteStore
from loom.store import CloseScan
from tests.e2e.app import Arith, expected
from tests.e2e.conftest import wait_serving

pytestmark = pytest.mark.timeout(180)


class Polls:
    """Counts the watcher's scans and what the writer connection ran for them."""

    def __init__(self, store: SQLiteStore) -> None:
        self.store = store
        self.scans: list[CloseScan] = []
        self.statements: list[str] = []
        self.steps = 0
        self.status_reads: list[int] = []
        self._changed = asyncio.Event()

    async def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        scan, statuses = self.store.closed_since, self.store.get_statuses

        async def counted_scan(*args: Any) -> CloseScan:
            result = await scan(*args)
            self.scans.append(result)
            self._changed.set()
            return result

        async def counted_statuses(workflow_ids: Any) -> Any:
            found = await statuses(workflow_ids)
            self.status_reads.append(len(workflow_ids))
            self._changed.set()
            return found

        monkeypatch.setattr(self.store, "closed_since", counted_scan)
        monkeypatch.setattr(self.store, "get_statuses", counted_statuses)

        def step() -> int:
            self.steps += 1
            return 0

        async def trace(conn: SQLiteConnection) -> None:
            conn._conn.set_trace_callback(self.statements.append)
            conn._conn.set_progress_handler(step, 1)  # one call per VM instruction

        await self.store._writer.submit(trace, (), False)

    async def until(self, condition: Any) -> None:
        while not condition():
            self._changed.clear()
            await self._changed.wait()

    async def cost_of_polls(self, count: int) -> tuple[int, int]:
        """Statements and VM instructions of each of the next `count` scans (all equal)."""
        per_poll: set[tuple[int, int]] = set()
        for _ in range(count):
            before = (len(self.statements), self.steps, len(self.scans))
            await self.until(lambda b=before: len(self.scans) > b[2])  # type: ignore[misc]
            per_poll.add((len(self.statements) - before[0], self.steps - before[1]))
        assert len(per_poll) == 1, per_poll
        return per_poll.pop()


async def test_waiters_poll_in_constant_cost_while_a_worker_process_closes_them(
    sqlite_db: Path, tmp_path: Path, spawn_worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = get_store()
    assert isinstance(store, SQLiteStore)
    handles = [await Arith.start({"n": n}, workflow_id=f"arith-{n}") for n in range(200)]
    polls = Polls(store)
    await polls.install(monkeypatch)

    results = [asyncio.create_task(h.result(timeout=150)) for h in handles[:10]]
    await polls.until(lambda: len(polls.status_reads) == 10)
    few = await polls.cost_of_polls(3)
    results += [asyncio.create_task(h.result(timeout=150)) for h in handles[10:]]
    await polls.until(lambda: len(polls.status_reads) == 200)
    many = await polls.cost_of_polls(3)
    assert few == many  # nothing committed elsewhere: one PRAGMA, whatever the waiters
    assert few[0] == 3  # BEGIN, PRAGMA data_version, COMMIT

    spawn_worker(sqlite_db)
    await wait_serving(tmp_path / "worker-0.log")
    outcomes = await asyncio.gather(*results)
    assert outcomes == [expected(n) for n in range(200)]
    assert max(polls.status_reads) == 1  # one status read per handle, at its start
    woken = [workflow_id for scan in polls.scans for workflow_id in scan.workflow_ids]
    assert sorted(woken) == sorted(h.workflow_id for h in handles)  # each close read once
