"""SQLite store: the embedded default backend.

One writer thread per database with group commit (`_writer`) runs the shared operations
(`loom.operations`); lease fencing happens inside each operation's transaction.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from loom.clock import StoreClock
from loom.dialect import Mode
from loom.schema import MIGRATIONS
from loom.sql_store import Operation, SQLStore
from loom.sqlite_store._writer import SQLiteConnection, _Writer, connect, migrate
from loom.store import Wakeups

__all__ = ["MIGRATIONS", "SQLiteConnection", "SQLiteStore", "connect", "migrate"]

T = TypeVar("T")


class SQLiteStore(SQLStore):
    """The embedded default store (one file, WAL); see module docstring."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self.wakeups = Wakeups()
        self._writer = _Writer(self.path)
        self.clock = StoreClock(*self._writer.clock_anchor)

    @property
    def is_numbering_closes(self) -> bool:
        return True

    async def _run(self, mode: Mode, op: Operation[T], *args: Any) -> T:
        # Every write goes through the one writer thread, so even STATEMENTS writes join its
        # batch transaction (BEGIN IMMEDIATE); reads share a deferred one.
        result: T = await self._writer.submit(op, args, mode is not Mode.READ)
        return result

    def _stop(self) -> None:
        self._writer.stop()
