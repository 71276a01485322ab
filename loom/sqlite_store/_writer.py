"""The SQLite writer thread: one connection per database, group commit, schema migrations.

Operations (coroutines of `loom.operations`) run on this thread over a `SQLiteConnection`,
whose statements execute as they are called; the thread drains its queue and commits every
pending operation in one transaction, then wakes the awaiting coroutines. Knows nothing of
what the operations do.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import queue
import re
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

from loom._json import dumps
from loom.clock import boot_id, monotonic_ms, wall_ms
from loom.dialect import SQLITE, Dialect, Rollback, run_now
from loom.exceptions import LoomError, StoreFullError
from loom.schema import MIGRATIONS, SCHEMA_COMPONENT
from loom.sql_store import hand_over

BUSY_TIMEOUT_MS = 10_000
LOCK_RETRY_S: tuple[float, float] | None = (0.0001, 0.001)
"""How the writer waits for the write lock another process holds: first and longest sleep
between BEGIN IMMEDIATE attempts (doubling), up to BUSY_TIMEOUT_MS in all. SQLite's own busy
handler sleeps 1, 2, 5, 10, 15, 20, 25 ms...: processes handing the lock around every ~1 ms
waited 0.6-4.8 ms per commit under it where these retries wait 0.08-2.3 ms, for 20-45%
more CPU per commit at 4 processes (bench/lock_wait.py; whole workflows through 1-4 worker
processes did not measurably change on the 2-core box). None: SQLite's busy handler."""
MAX_BATCH = 512
SWITCH_INTERVAL_S = 0.0005
"""The GIL hand-over interval while a writer runs. sqlite3 releases the GIL around every
statement, and taking it back waits for the event loop thread to yield it: by default up to
5 ms per statement, while every workflow of the process waits on this one thread. 0.5 ms
measured +20-30% workflows/s (bench/throughput.py); the interval is only ever lowered."""
_PARAMETER = re.compile(r"\$(\d+)")
_ROWSET = re.compile(r"\{rows (\d+) (\w+) ([\w,]+) (\w+|-)\}")
"""A `Dialect.rows` set: `{rows PARAM ALIAS COLUMN,... ORDINALITY-or-dash}`."""
MAX_INLINE_ROWS = 16
_MANY = MAX_INLINE_ROWS + 1
_CELL = re.compile(r"@(\d+)")
"""A value of an inline row set while `_spell` numbers them (`@` is free in engine SQL)."""
_ARRAY_PARAMETER = re.compile(r"json_each\(\$(\d+)\)")
"""An array parameter (`Dialect.any`, `none_of`, many rows): bound as JSON text."""
_SYNCHRONOUS = ("off", "normal", "full", "extra")


def connect(path: str) -> sqlite3.Connection:
    """Open a connection with the engine's pragmas (WAL, busy timeout, full sync)."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


@contextlib.contextmanager
def _immediate(conn: sqlite3.Connection) -> Iterator[None]:
    """One write transaction taken at once (BEGIN IMMEDIATE): committed, or rolled back on
    any error, COMMIT's own included."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise


def migrate(conn: sqlite3.Connection) -> int:
    """Apply pending migrations; returns the schema version."""
    with _immediate(conn):
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (component TEXT NOT NULL, "
            "version INTEGER NOT NULL, applied_at INTEGER NOT NULL, "
            "PRIMARY KEY (component, version))"
        )
        row = conn.execute(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations WHERE component = ?",
            (SCHEMA_COMPONENT,),
        ).fetchone()
        current = int(row[0])
        for version, script in enumerate(MIGRATIONS[current:], start=current + 1):
            for statement in filter(str.strip, script.split(";")):
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations (component, version, applied_at) VALUES (?, ?, ?)",
                # a stamp for people, compared by no process: this process's wall clock
                (SCHEMA_COMPONENT, version, wall_ms()),
            )
    return len(MIGRATIONS)


def anchor_clock(conn: sqlite3.Connection) -> tuple[int, float]:
    """The database's clock anchor for this boot of the host (see `loom.clock`): the first
    process of a boot sets it from its wall clock; every later one reads it back."""
    boot = boot_id()
    with _immediate(conn):
        row = conn.execute("SELECT boot_id, wall_ms, monotonic_ms FROM clock").fetchone()
        if row is not None and row[0] == boot:
            anchor = (int(row[1]), float(row[2]))
        else:
            anchor = (wall_ms(), monotonic_ms())
            conn.execute("DELETE FROM clock")
            conn.execute(
                "INSERT INTO clock (boot_id, wall_ms, monotonic_ms) VALUES (?, ?, ?)",
                (boot, *anchor),
            )
    return anchor


class SQLiteConnection:
    """`loom.dialect.Connection` over the writer's sqlite3 connection: `$n` placeholders
    become `?n`, array parameters JSON text for `json_each`, and each call runs at once."""

    dialect: Dialect = SQLITE

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def _execute(self, sql: str, args: tuple[Any, ...]) -> sqlite3.Cursor:
        rowsets = _rowset_parameters(sql)
        # Past MAX_INLINE_ROWS every size spells the same text: one cache entry, not one each.
        sizes = tuple(min(len(args[p - 1]), _MANY) for p in rowsets) if rowsets else ()
        text, picks, arrays, inline, verbatim = _spell(sql, sizes)
        if verbatim == len(args):
            return self._conn.execute(text, args)  # most statements: the arguments as given
        # Operations pass one argument list to the several statements of one write, each
        # using part of it: only the parameters this one uses are bound (an unused one bound
        # as NULL cost sqlite3 a failed adaptation each), then small row sets value by value.
        params = [args[i] for i in picks]
        for i in arrays:
            params[i] = dumps(params[i])
        for p in inline:
            for row in args[p - 1]:
                params.extend(row)
        return self._conn.execute(text, params)

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        return self._execute(sql, args).fetchall()

    async def fetchrow(self, sql: str, *args: Any) -> Any | None:
        rows = self._execute(sql, args).fetchall()  # to the end: RETURNING completes
        return rows[0] if rows else None

    async def fetchval(self, sql: str, *args: Any) -> Any:
        rows = self._execute(sql, args).fetchall()  # not through fetchrow: one coroutine less
        return rows[0][0] if rows else None

    async def execute(self, sql: str, *args: Any) -> int:
        cursor = self._execute(sql, args)
        cursor.fetchall()
        return max(cursor.rowcount, 0)  # -1 for statements that write no rows

    async def notify_tasks(self) -> None:
        """Nothing to do: only this process's workers share the writer, and the store wakes
        them after the commit."""

    async def settings(self) -> dict[str, str]:
        settings = {
            pragma: str(self._conn.execute(f"PRAGMA {pragma}").fetchone()[0])
            for pragma in ("journal_mode", "synchronous", "busy_timeout")
        }
        if LOCK_RETRY_S is not None:  # the writer waits for the lock itself, this long
            settings["busy_timeout"] = str(BUSY_TIMEOUT_MS)
        level = settings["synchronous"]
        if level.isdigit() and int(level) < len(_SYNCHRONOUS):
            settings["synchronous"] = _SYNCHRONOUS[int(level)]
        return settings


@functools.lru_cache(maxsize=1024)
def _rowset_parameters(sql: str) -> tuple[int, ...]:
    """The parameters holding the rows of each `Dialect.rows` set in `sql`, in order."""
    return tuple(int(m[1]) for m in _ROWSET.finditer(sql))


@functools.lru_cache(maxsize=1024)
def _spell(
    sql: str, sizes: tuple[int, ...]
) -> tuple[str, tuple[int, ...], tuple[int, ...], tuple[int, ...], int]:
    """SQLite's text of `sql` for row sets of `sizes` rows, with its parameters renumbered
    1..k over the ones it uses; the (0-based) positions of the arguments bound to them, in
    order; which of those are arrays it reads as JSON (`json_each`); the row-set parameters
    spelled inline as `VALUES`, whose values are bound, row after row, after them; and the
    number of arguments that are bound just as given (all of them, in order, nothing to
    encode or add), or -1.

    A few rows as `VALUES` bind their values directly: measured about half the cost of
    parsing a JSON array of rows (whose payloads, JSON text themselves, were escaped twice).
    Many rows stay one JSON array: one statement text, and no limit on bound variables."""
    cells = 0
    rowsets = iter(sizes)
    inline: list[int] = []

    def rowset(match: re.Match[str]) -> str:
        nonlocal cells
        param, alias, ordinality = int(match[1]), match[2], match[4]
        names = match[3].split(",")
        rows = next(rowsets)
        if rows > MAX_INLINE_ROWS:
            selected = [f"json_extract(r.value, '$[{i}]') AS {c}" for i, c in enumerate(names)]
            if ordinality != "-":
                selected.append(f"r.key + 1 AS {ordinality}")
            return f"(SELECT {', '.join(selected)} FROM json_each(${param}) r) AS {alias}"
        inline.append(param)
        if not rows:
            nulls = ", ".join(f"NULL AS {c}" for c in [*names, ordinality] if c != "-")
            return f"(SELECT {nulls} WHERE false) AS {alias}"
        values = []
        for n in range(1, rows + 1):
            # `@n`: the n-th inline value, numbered after the parameters below
            row = [f"@{cells + i + 1}" for i in range(len(names))]
            cells += len(names)
            values.append(f"({', '.join([*row, str(n)] if ordinality != '-' else row)})")
        columns = [*names, ordinality] if ordinality != "-" else names
        renamed = ", ".join(f"column{i + 1} AS {c}" for i, c in enumerate(columns))
        return f"(SELECT {renamed} FROM (VALUES {', '.join(values)})) AS {alias}"

    text = _ROWSET.sub(rowset, sql)
    used = sorted({int(n) for n in _PARAMETER.findall(text)})
    number = {n: i for i, n in enumerate(used, start=1)}
    arrays = {int(n) for n in _ARRAY_PARAMETER.findall(text)}
    text = _CELL.sub(lambda m: f"?{len(used) + int(m[1])}", text)
    picks = tuple(n - 1 for n in used)
    encoded = tuple(i for i, n in enumerate(used) if n in arrays)
    as_given = not (encoded or inline) and picks == tuple(range(len(picks)))
    return (
        _PARAMETER.sub(lambda m: f"?{number[int(m[1])]}", text),
        picks,
        encoded,
        tuple(inline),
        len(picks) if as_given else -1,
    )


Operation = Callable[..., Coroutine[Any, Any, Any]]
_Op = tuple[Operation, tuple[Any, ...], "asyncio.Future[Any]", bool]


class _Writer:
    """The single DB thread: drains queued operations and commits them together."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._queue: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.clock_anchor = (0, 0.0)
        if sys.getswitchinterval() > SWITCH_INTERVAL_S:
            sys.setswitchinterval(SWITCH_INTERVAL_S)
        self._thread = threading.Thread(target=self._main, name=f"loom-db:{path}", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error

    def submit(self, fn: Operation, args: tuple[Any, ...], write: bool) -> asyncio.Future[Any]:
        """Queue `fn(connection, *args)` for the next batch; `write` takes the write lock."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.put((fn, args, future, write))
        return future

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _main(self) -> None:
        try:
            conn = connect(self._path)
            migrate(conn)
            self.clock_anchor = anchor_clock(conn)
        except BaseException as err:  # surfaced to the constructor's caller
            self._error = err
            self._ready.set()
            return
        self._ready.set()
        if LOCK_RETRY_S is not None:
            # Only BEGIN IMMEDIATE waits for another process in WAL mode; `_begin_immediate` retries
            # it. A rare busy read (a WAL reset) is retried by `_run_batch`.
            conn.execute("PRAGMA busy_timeout = 0")
        try:
            self._serve(conn)
        finally:
            conn.close()

    def _serve(self, conn: sqlite3.Connection) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            stop = False
            while len(batch) < MAX_BATCH:
                try:
                    extra = self._queue.get_nowait()
                except queue.Empty:
                    break
                if extra is None:
                    stop = True
                    break
                batch.append(extra)
            self._run_batch(conn, batch)
            if stop:
                return

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Op]) -> None:
        results: list[tuple[bool, Any]] = []
        for attempt in range(20):
            try:
                results = self._transaction(conn, batch)
                break
            except Exception as err:
                # Whatever broke (a full disk at COMMIT, I/O errors), every caller gets the
                # error and this thread lives on: callers must never wait forever.
                _rollback(conn)
                if isinstance(err, sqlite3.OperationalError) and _is_busy(err):
                    # busy_timeout already waited; another process holds the lock for long.
                    time.sleep(0.01 * (attempt + 1))
                    continue
                results = [(False, _store_error(err))] * len(batch)
                break
        else:
            results = [(False, LoomError("database stayed locked by another process"))] * len(batch)
        hand_over([future for _, _, future, _ in batch], results)

    def _transaction(self, conn: sqlite3.Connection, batch: list[_Op]) -> list[tuple[bool, Any]]:
        """Run the batch in one transaction; an operation that raises is dropped and the rest
        re-run in a fresh transaction (optimistic: no per-operation savepoint on the hot path).
        """
        failed: dict[int, Exception] = {}
        connection = SQLiteConnection(conn)
        while True:
            writes = any(op[3] for i, op in enumerate(batch) if i not in failed)
            if writes:
                _begin_immediate(conn)
            else:
                conn.execute("BEGIN")
            results: list[tuple[bool, Any]] = []
            try:
                for index, (fn, args, _, _) in enumerate(batch):
                    if index in failed:
                        results.append(_outcome(failed[index]))
                        continue
                    try:
                        results.append((True, run_now(fn(connection, *args))))
                    except Exception as err:  # Rollback included: its writes must go
                        if isinstance(err, sqlite3.OperationalError) and _is_busy(err):
                            raise
                        failed[index] = err
                        break
                else:
                    conn.execute("COMMIT")
                    return results
            except BaseException:
                _rollback(conn)
                raise
            # SQLite may already have rolled back (SQLITE_FULL does): ROLLBACK would fail.
            _rollback(conn)


def _begin_immediate(conn: sqlite3.Connection) -> None:
    """Take the write lock, retrying every 0.1-1 ms while another process holds it (see
    LOCK_RETRY_S); after BUSY_TIMEOUT_MS the busy error goes to `_run_batch`."""
    if LOCK_RETRY_S is None:
        conn.execute("BEGIN IMMEDIATE")
        return
    delay, longest = LOCK_RETRY_S
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            conn.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as err:
            if not _is_busy(err) or time.monotonic() >= deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, longest)


def _outcome(err: Exception) -> tuple[bool, Any]:
    """What the caller of a dropped operation gets: its error, or a Rollback's result."""
    return (True, err.result) if isinstance(err, Rollback) else (False, err)


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def _store_error(err: Exception) -> Exception:
    """A full disk says so, and says that nothing was written (the transaction rolled back)."""
    if (
        isinstance(err, sqlite3.Error)
        and getattr(err, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
    ):
        return StoreFullError(f"the database disk is full: nothing was written ({err})")
    return err


def _is_busy(err: sqlite3.OperationalError) -> bool:
    return "locked" in str(err) or "busy" in str(err)
