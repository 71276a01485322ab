"""What truly differs between the two SQL stores, and nothing else.

The store's operations (the `loom.operations` package, one private module per noun) are
written once, as coroutines over a `Connection`. SQL is written in PostgreSQL's
numbered-placeholder style (`$1`); the few constructs the dialects spell differently come
from the connection's `Dialect`: arrays as parameters (`= ANY($1::text[])` against
`IN (SELECT value FROM json_each(?1))`), row sets built from parallel arrays (`unnest`
against `json_each`), row locks (SQLite has one writer and needs none) and writable CTEs
(PostgreSQL folds several writes into one round trip).

The SQLite connection runs each statement synchronously inside its writer thread's batch
transaction, so an operation coroutine there never really suspends (`run_now` drives it);
the PostgreSQL connection awaits asyncpg on a pooled connection.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class Mode(enum.Enum):
    """How an operation needs to run; each backend maps it onto its own transactions."""

    READ = "read"
    """Reads only: SQLite runs it in a deferred transaction, PostgreSQL without one."""
    STATEMENTS = "statements"
    """Writes whose statements are each whole on their own: PostgreSQL skips BEGIN/COMMIT
    (two round trips), SQLite still group-commits them with the batch."""
    TRANSACTION = "transaction"
    """Writes that must commit together or not at all."""


class Rollback(Exception):
    """Raised by an operation to undo its writes and still return `result` to the caller.

    A lost lease is found only after the workflow row is locked (PostgreSQL's lock order:
    the workflow row before its task rows), so the operation has written by then.
    """

    def __init__(self, result: object) -> None:
        super().__init__("rolled back")
        self.result = result


@dataclass(frozen=True, slots=True, eq=False)
class Dialect:
    """One of the two module-level dialects below, compared and hashed by identity: its
    memoized methods hash it on every call, and a field-by-field hash cost a tuple of six
    each time on the writer thread's hot path."""

    name: str
    """`sqlite` or `postgresql`: the backend `loom doctor` reports.

    The SQL-building methods are memoized: operations call them on every store operation,
    and rebuilding the same text cost microseconds each on the writer thread's hot path."""
    writable_ctes: bool
    """INSERT/DELETE inside WITH: several writes in one statement (PostgreSQL only)."""
    for_update: str
    """Appended to a SELECT that must lock its rows until commit."""
    skip_locked: str
    """Appended to a SELECT whose locked rows others may take instead of waiting."""
    next_close: str | None
    """The `closed_seq` a closing workflow takes: the next number on SQLite, whose one write
    lock (across processes) orders closes as they commit, so a reader that has seen number
    n has seen every close up to n. None (the column stays NULL) on PostgreSQL: concurrent
    writers would commit numbers out of order, and its closes reach other processes over
    NOTIFY."""
    change_counter: str | None
    """A read of what changes whenever another connection commits (SQLite's
    `PRAGMA data_version`): one cheap statement that says whether anything could have closed."""

    @functools.lru_cache(maxsize=256)  # noqa: B019 -- two module-level dialects, kept anyway
    def any(self, column: str, param: int, sql_type: str = "text") -> str:
        """`column` equals one element of the array passed as parameter `param`."""
        if self.name == "postgresql":
            return f"{column} = ANY(${param}::{sql_type}[])"
        return f"{column} IN (SELECT value FROM json_each(${param}))"

    def json_text(self, column: str, *path: str) -> str:
        """The value at `path` inside the JSON text in `column` (SQL NULL when absent).
        `path` is written into the SQL, so it must be engine constants, never user input."""
        if self.name == "postgresql":
            return f"({column}::jsonb #>> '{{{','.join(path)}}}')"
        return f"json_extract({column}, '$.{'.'.join(path)}')"

    @functools.lru_cache(maxsize=256)  # noqa: B019 -- two module-level dialects, kept anyway
    def none_of(self, column: str, param: int, sql_type: str = "text") -> str:
        if self.name == "postgresql":
            return f"{column} <> ALL(${param}::{sql_type}[])"
        return f"{column} NOT IN (SELECT value FROM json_each(${param}))"

    @functools.lru_cache(maxsize=256)  # noqa: B019 -- two module-level dialects, kept anyway
    def rows(
        self,
        alias: str,
        columns: Sequence[tuple[str, str]],
        first: int,
        *,
        ordinality: str | None = None,
    ) -> str:
        """A row set from the parameters `columns(...)` made, starting at `first`, one column
        per (name, type); `ordinality` names a 1-based row-number column.

        PostgreSQL unnests parallel arrays. On SQLite the spelling depends on how many rows
        there are, which only the statement's arguments tell: the text is a `{rows ...}`
        token that the SQLite connection spells at execute time (`loom.sqlite_store`), as
        `VALUES` for the few rows of the hot path and a JSON array of rows beyond."""
        names = [c for c, _ in columns]
        if self.name == "postgresql":
            arrays = ", ".join(f"${first + i}::{t}[]" for i, (_, t) in enumerate(columns))
            number = " WITH ORDINALITY" if ordinality else ""
            listed = ", ".join([*names, ordinality] if ordinality else names)
            return f"unnest({arrays}){number} AS {alias} ({listed})"
        return f"{{rows {first} {alias} {','.join(names)} {ordinality or '-'}}}"

    def columns(self, *arrays: Sequence[Any]) -> tuple[Any, ...]:
        """The parameters of a `rows` set from its columns' values (all the same length):
        the arrays themselves on PostgreSQL; on SQLite the rows in the first parameter (the
        others unused), so both spell the same statement with the same numbering."""
        if self.name == "postgresql":
            return arrays
        return (list(zip(*arrays, strict=True)), *([None] * (len(arrays) - 1)))


POSTGRESQL = Dialect(
    name="postgresql",
    writable_ctes=True,
    for_update=" FOR UPDATE",
    skip_locked=" FOR UPDATE SKIP LOCKED",
    next_close=None,
    change_counter=None,
)
SQLITE = Dialect(
    name="sqlite",
    writable_ctes=False,
    for_update="",
    skip_locked="",
    # ORDER BY ... LIMIT 1 reads one entry of the partial index (MAX with a WHERE walks it).
    next_close="COALESCE((SELECT closed_seq + 1 FROM workflows WHERE closed_seq IS NOT NULL "
    "ORDER BY closed_seq DESC LIMIT 1), 1)",
    change_counter="PRAGMA data_version",
)


class Row(Protocol):
    def __getitem__(self, index: int) -> Any: ...


class Connection(Protocol):
    """One connection inside one operation: what `loom.operations` may call."""

    @property
    def dialect(self) -> Dialect: ...

    async def fetch(self, sql: str, *args: Any) -> Sequence[Any]: ...

    async def fetchrow(self, sql: str, *args: Any) -> Any:
        """The first row, or None."""

    async def fetchval(self, sql: str, *args: Any) -> Any: ...

    async def execute(self, sql: str, *args: Any) -> int:
        """The number of rows the statement wrote: a fence reads it, where `RETURNING`
        would cost SQLite an ephemeral table per execution."""

    async def notify_tasks(self) -> None:
        """Tell other processes, at commit, that tasks became runnable (SQLite: no-op, its
        store wakes its own process after the commit)."""

    async def settings(self) -> dict[str, str]:
        """The connection settings `loom doctor` shows."""
        ...


def run_now(coro: Coroutine[Any, Any, T]) -> T:
    """Run an operation over a synchronous connection to its end, on this thread.

    Its awaits all complete at once (each statement runs as it is called), so the first
    `send` finishes it; anything else is a bug, caught here rather than hanging the writer.
    """
    try:
        coro.send(None)
    except StopIteration as done:
        result: T = done.value
        return result
    coro.close()
    raise RuntimeError("a store operation awaited something other than its connection")
