"""PostgreSQL store (asyncpg): the scale-out backend, with SQLite's tables and semantics.

A DB thread runs an event loop that owns the connection pool and a LISTEN connection, so the
store serves callers on any event loop, as SQLite's writer thread does. Write transactions
waiting together are group-committed in one transaction by the DB thread's writer, reads and
single statements run alongside on other pooled connections; tasks are claimed with `FOR
UPDATE SKIP LOCKED`; commits fence by deleting the task under its lease; `NOTIFY loom_tasks`
wakes other processes' workers.

Lock order: a write on a workflow locks its `workflows` row before any of its task rows.
Claims lock task rows only and never wait for a workflow row, so the two cannot deadlock; the
rare cross-workflow cycle (a child closing while its parent cancels it) is retried.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from loom.clock import StoreClock
from loom.dialect import Mode
from loom.postgres_store._database import (
    CHANNEL,
    DEFAULT_POOL_SIZE,
    MAX_POOL_SIZE,
    MIGRATIONS,
    PostgresConnection,
    _Database,
    is_postgres_url,
    migrate,
)
from loom.sql_store import Operation, SQLStore
from loom.store import Wakeups

__all__ = [
    "CHANNEL",
    "MIGRATIONS",
    "PostgresConnection",
    "PostgresStore",
    "is_postgres_url",
    "migrate",
]

T = TypeVar("T")


class _Wakeups(Wakeups):
    """In-process wakeups that also NOTIFY other processes when tasks become runnable."""

    def __init__(self) -> None:
        super().__init__()
        self.notify: Callable[..., None] = lambda closed_workflow_id=None: None

    def tasks_ready(self) -> None:
        super().tasks_ready()
        self.notify()

    def local_tasks_ready(self) -> None:
        super().tasks_ready()

    def closing_tasks_ready(self, workflow_id: str, wakes_others: bool) -> None:
        self.notify(workflow_id)  # handles waiting in other processes
        # In-process only: a close that wakes a parent or children notifies inside its own
        # transaction (_close_workflow); most closes create nothing runnable, and a NOTIFY
        # per close would send every other worker process claiming for nothing.
        if wakes_others:
            self.local_tasks_ready()

    def remote_tasks_ready(self) -> None:  # another process sent NOTIFY
        super().tasks_ready()


class PostgresStore(SQLStore):
    """The scale-out store: many worker processes on many hosts share one PostgreSQL."""

    wakeups: _Wakeups

    @property
    def is_pushing_closes(self) -> bool:
        return self._db.is_listening

    def __init__(self, url: str) -> None:
        self.url = url
        self.wakeups = wakeups = _Wakeups()
        self.clock = StoreClock.local()
        self._db = _Database(
            url, wakeups.remote_tasks_ready, wakeups.workflow_closed, clock=self.clock
        )
        wakeups.notify = self._db.notify

    async def _run(self, mode: Mode, op: Operation[T], *args: Any) -> T:
        result: T = await self._db.submit(op, args, mode)
        return result

    @property
    def pool_size(self) -> int:
        """The connection pool's maximum size (grown by `reserve`)."""
        return self._db.pool_size

    async def reserve(self, concurrency: int) -> None:
        await asyncio.get_running_loop().run_in_executor(
            None, self._db.resize, max(DEFAULT_POOL_SIZE, min(concurrency + 2, MAX_POOL_SIZE))
        )

    def _stop(self) -> None:
        self._db.stop()
