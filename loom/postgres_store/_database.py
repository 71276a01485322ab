"""The PostgreSQL DB thread: an event loop owning the pool, the LISTEN connection and NOTIFY.

Callers on any event loop submit operations and get their results back on their own loop.
Reads and single statements run at once, in parallel on pooled connections. Transactions
are group-committed like SQLite's writer batches: one writer runs the ones waiting together
in one transaction on one connection, so BEGIN, COMMIT and the pool's hand-over are paid once
per batch instead of once per operation (they were a third of the round trips of a
workflow). Deadlocks and serialization failures are retried. Knows nothing of workflows
beyond the schema it migrates.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Coroutine
from typing import Any

import asyncpg

from loom.clock import REANCHOR_SECONDS, StoreClock, monotonic_ms, wall_ms
from loom.dialect import POSTGRESQL, Dialect, Mode, Rollback
from loom.exceptions import LoomError
from loom.schema import SCHEMA_COMPONENT, migrations
from loom.sql_store import Outcome, hand_over

Connection = Any  # asyncpg.Connection (asyncpg ships no type information)

logger = logging.getLogger("loom.postgres")

CHANNEL = "loom_tasks"
CLOSED_CHANNEL = "loom_closed"
"""Payload: closed workflow ids, one per line, so handles in other processes return at once."""
MAX_PAYLOAD = 7_000  # NOTIFY payloads must stay under 8,000 bytes
MIGRATION_LOCK = 0x6C6F6F6D  # pg_advisory_xact_lock key shared with the registry ("loom")
DEFAULT_POOL_SIZE = 4
MAX_POOL_SIZE = 16
"""Per process: four workers at full concurrency stay well under max_connections = 100."""
RETRIES = 10
MAX_BATCH = 64
"""Transactions committed together at most: each holds its workflow's row lock until the
batch commits, so a batch's length bounds how long other processes wait on one."""
OPEN_TIMEOUT = 30.0
URL_SCHEMES = ("postgres://", "postgresql://")

MIGRATIONS = migrations("BIGSERIAL PRIMARY KEY")
_RETRYABLE = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)


def is_postgres_url(url: str) -> bool:
    return url.startswith(URL_SCHEMES)


async def migrate(conn: Connection) -> int:
    """Apply pending migrations under an advisory lock (workers may start together)."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (component TEXT NOT NULL, "
            "version BIGINT NOT NULL, applied_at BIGINT NOT NULL, "
            "PRIMARY KEY (component, version))"
        )
        current = int(
            await conn.fetchval(
                "SELECT COALESCE(MAX(version), 0) FROM schema_migrations WHERE component = $1",
                SCHEMA_COMPONENT,
            )
        )
        for version, script in enumerate(MIGRATIONS[current:], start=current + 1):
            await conn.execute(script)
            await conn.execute(
                "INSERT INTO schema_migrations (component, version, applied_at) "
                "VALUES ($1, $2, $3)",
                SCHEMA_COMPONENT,
                version,
                wall_ms(),
            )
    return len(MIGRATIONS)


_Op = Callable[..., Coroutine[Any, Any, Any]]
_Call = tuple[_Op, tuple[Any, ...], "asyncio.Future[Any]"]


class PostgresConnection:
    """`loom.dialect.Connection` over a pooled asyncpg connection, for one operation."""

    dialect: Dialect = POSTGRESQL

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        rows: list[Any] = await self._conn.fetch(sql, *args)
        return rows

    async def fetchrow(self, sql: str, *args: Any) -> Any | None:
        return await self._conn.fetchrow(sql, *args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        return await self._conn.fetchval(sql, *args)

    async def execute(self, sql: str, *args: Any) -> int:
        status = await self._conn.execute(sql, *args)  # the command tag: "DELETE 1"
        count = status.rsplit(" ", 1)[-1]
        return int(count) if count.isdigit() else 0

    async def notify_tasks(self) -> None:
        """Delivered at commit: workers in other processes claim what became runnable."""
        await self._conn.execute("SELECT pg_notify($1, '')", CHANNEL)

    async def settings(self) -> dict[str, str]:
        return {
            name: str(await self._conn.fetchval(f"SHOW {name}"))
            for name in ("server_version", "synchronous_commit", "fsync", "max_connections")
        }


class _Database:
    """The DB thread: an event loop with the pool, the listener and the notifier."""

    def __init__(
        self,
        url: str,
        on_remote_tasks: Callable[[], None],
        on_remote_closed: Callable[[str], None],
        *,
        clock: StoreClock,
    ) -> None:
        self._url = url
        self._clock = clock
        self._on_remote_tasks = on_remote_tasks
        self._on_remote_closed = on_remote_closed
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="loom-db:postgres", daemon=True
        )
        self._pool: Any = None
        self._pool_size = DEFAULT_POOL_SIZE
        self._listener: Connection | None = None
        self._listener_pid = 0
        self._running: set[asyncio.Task[Any]] = set()
        self._batch: list[_Call] = []
        self._inbox: list[tuple[_Op, tuple[Any, ...], Mode, asyncio.Future[Any]]] = []
        self._inbox_lock = threading.Lock()
        self._inbox_woken = False
        self._writing = False
        self._notifying = False
        self._tasks_pending = False
        self._closed_pending: list[str] = []
        self._closing = False
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._open(), self._loop).result(OPEN_TIMEOUT)
        except BaseException:
            self.stop()
            raise

    async def _open(self) -> None:
        conn = await asyncpg.connect(self._url)
        try:
            await migrate(conn)
        finally:
            await conn.close()
        self._pool = await self._create_pool(self._pool_size)
        await self._anchor_clock()
        await self._listen()

    async def _anchor_clock(self) -> None:
        """Read the server's clock (see `loom.clock`): the reading is taken at the midpoint of
        the round trip, so hosts agree within half of one."""
        try:
            async with self._pool.acquire() as conn:
                before = monotonic_ms()
                server = await conn.fetchval(
                    "SELECT (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::bigint"
                )
                after = monotonic_ms()
            self._clock.anchor(int(server), (before + after) / 2)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as err:
            logger.warning("reading the server's clock failed (%s); retrying", err)
        if not self._closing:
            self._loop.call_later(REANCHOR_SECONDS, self._reanchor)

    def _reanchor(self) -> None:
        if not self._closing:
            self._spawn(self._anchor_clock())

    async def _create_pool(self, size: int) -> Any:
        return await asyncpg.create_pool(self._url, min_size=1, max_size=size, reset=_keep_session)

    @property
    def is_listening(self) -> bool:
        """Whether NOTIFYs of other processes reach this one now."""
        return self._listener is not None

    async def _listen(self) -> bool:
        try:
            listener = await asyncpg.connect(self._url)
            await listener.add_listener(CHANNEL, self._notified)
            await listener.add_listener(CLOSED_CHANNEL, self._closed_notified)
            listener.add_termination_listener(self._listener_lost)
        except (OSError, asyncpg.PostgresError) as err:
            logger.warning("LISTEN %s failed (%s); workers fall back to polling", CHANNEL, err)
            return False
        self._listener, self._listener_pid = listener, listener.get_server_pid()
        return True

    def _notified(self, conn: Connection, pid: int, channel: str, payload: str) -> None:
        if pid != self._listener_pid:  # our own NOTIFY already woke this process
            self._on_remote_tasks()

    def _closed_notified(self, conn: Connection, pid: int, channel: str, payload: str) -> None:
        if pid != self._listener_pid:
            for workflow_id in payload.split("\n"):
                self._on_remote_closed(workflow_id)

    def _listener_lost(self, conn: Connection) -> None:
        self._listener = None
        self._loop.call_later(1.0, self._relisten)

    def _relisten(self) -> None:
        if not self._closing:
            self._spawn(self._listen_again())

    async def _listen_again(self) -> None:
        if await self._listen():
            self._on_remote_tasks()  # notifications sent meanwhile are lost: claim once
        elif not self._closing:
            self._loop.call_later(5.0, self._relisten)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = self._loop.create_task(coro)
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        return task

    # -- called from other threads -------------------------------------------------------

    @property
    def pool_size(self) -> int:
        return self._pool_size

    def submit(self, fn: _Op, args: tuple[Any, ...], mode: Mode) -> asyncio.Future[Any]:
        """Run `fn(connection, *args)` on a pooled connection, in a transaction for
        `Mode.TRANSACTION` (else each statement commits by itself); the result arrives on
        the caller's loop."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        with self._inbox_lock:
            self._inbox.append((fn, args, mode, future))
            if self._inbox_woken:
                return future
            self._inbox_woken = True
        # One wake-up of the DB loop takes every operation submitted until it runs: a wake-up
        # is a write to its self-pipe and a turn of its loop, and callers submit in bursts.
        try:
            self._loop.call_soon_threadsafe(self._take_inbox)
        except RuntimeError:  # the loop is closed: this caller and the next are told so
            with self._inbox_lock:
                self._inbox_woken = False
            raise
        return future

    def notify(self, closed_workflow_id: str | None = None) -> None:
        """NOTIFY soon that tasks are runnable (or that a workflow closed); requests arriving
        while one is in flight coalesce into the next."""
        with contextlib.suppress(RuntimeError):  # the loop is stopping
            self._loop.call_soon_threadsafe(self._request_notify, closed_workflow_id)

    def resize(self, size: int) -> None:
        asyncio.run_coroutine_threadsafe(self._resize(size), self._loop).result(OPEN_TIMEOUT)

    def stop(self) -> None:
        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(15)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._loop.close()

    # -- on the DB thread ----------------------------------------------------------------

    def _take_inbox(self) -> None:
        with self._inbox_lock:
            inbox, self._inbox, self._inbox_woken = self._inbox, [], False
        for call in inbox:
            self._start(*call)

    def _start(
        self, fn: _Op, args: tuple[Any, ...], mode: Mode, future: asyncio.Future[Any]
    ) -> None:
        if mode is Mode.TRANSACTION:
            self._batch.append((fn, args, future))
            if not self._writing:
                self._writing = True
                self._spawn(self._write())
            return
        task = self._spawn(self._run(fn, args, transaction=False))
        task.add_done_callback(lambda done: _hand_back(done, future))

    async def _run(self, fn: _Op, args: tuple[Any, ...], *, transaction: bool) -> Any:
        if self._closing:
            raise LoomError("the PostgreSQL store is closed")
        for attempt in range(RETRIES):
            pool = self._pool
            async with pool.acquire() as conn:
                connection = PostgresConnection(conn)
                try:
                    if not transaction:
                        return await fn(connection, *args)
                    async with conn.transaction():
                        return await fn(connection, *args)
                except Rollback as rollback:
                    return rollback.result
                except _RETRYABLE:  # the server chose this one to break a lock cycle
                    if attempt == RETRIES - 1:
                        raise
            await asyncio.sleep(0.005 * (attempt + 1))
        raise AssertionError("unreachable")

    async def _write(self) -> None:
        """The writer: commits the waiting transactions batch by batch, one at a time (two
        batches of one process running at once could lock each other's workflows)."""
        try:
            while self._batch:
                batch, self._batch = self._batch[:MAX_BATCH], self._batch[MAX_BATCH:]
                # In the order of the workflow rows they lock first: two processes' batches
                # then take those locks in one order, and cannot wait on each other in a cycle.
                batch.sort(key=_lock_key)
                try:
                    outcomes = await self._commit(batch)
                except Exception as err:  # the connection broke, or COMMIT failed: all fail
                    outcomes = [(False, err)] * len(batch)
                except BaseException:  # cancelled: callers must never wait forever
                    hand_over([call[2] for call in batch], [_closed() for _ in batch])
                    raise
                hand_over([call[2] for call in batch], outcomes)
        finally:
            self._writing = False

    async def _commit(self, batch: list[_Call]) -> list[Outcome]:
        """One transaction for the whole batch. Optimistic, as SQLite's writer: a member that
        raises (a Rollback included: its writes must go) is rolled back with the rest, keeps
        its outcome, and the others run again without it; no savepoint per member. A lock
        cycle sends every member to run alone, with the retries of `_run`."""
        if len(batch) == 1:
            return [await _outcome_of(self._run(*batch[0][:2], transaction=True))]
        if self._closing:
            raise LoomError("the PostgreSQL store is closed")
        failed: dict[int, Outcome] = {}
        async with self._pool.acquire() as conn:
            connection = PostgresConnection(conn)
            while len(failed) < len(batch):
                results: list[Outcome] = []
                transaction = conn.transaction()
                await transaction.start()
                try:
                    for index, (fn, args, _) in enumerate(batch):
                        if index in failed:
                            results.append(failed[index])
                            continue
                        try:
                            results.append((True, await fn(connection, *args)))
                        except _RETRYABLE:
                            raise
                        except Exception as err:
                            failed[index] = _failure(err)
                            break
                    else:
                        await transaction.commit()
                        return results
                except _RETRYABLE:
                    await transaction.rollback()
                    break
                except BaseException:
                    if not conn.is_closed():
                        await transaction.rollback()
                    raise
                await transaction.rollback()
            else:
                return [failed[index] for index in range(len(batch))]
        # A lock cycle: each member alone, retried, as if it had never been batched.
        return [
            failed[index]
            if index in failed
            else await _outcome_of(self._run(fn, args, transaction=True))
            for index, (fn, args, _) in enumerate(batch)
        ]

    def _request_notify(self, closed_workflow_id: str | None) -> None:
        if closed_workflow_id is None:
            self._tasks_pending = True
        else:
            self._closed_pending.append(closed_workflow_id)
        if not self._notifying and self._listener is not None:
            self._notifying = True
            self._spawn(self._send_notify())

    async def _send_notify(self) -> None:
        try:
            while self._listener is not None and (self._tasks_pending or self._closed_pending):
                if self._tasks_pending:
                    self._tasks_pending = False
                    await self._listener.execute(f"NOTIFY {CHANNEL}")
                if self._closed_pending:
                    payload = self._take_closed()
                    await self._listener.execute(
                        "SELECT pg_notify($1, $2)", CLOSED_CHANNEL, payload
                    )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as err:
            logger.warning("NOTIFY failed: %s", err)
        finally:
            self._notifying = False

    def _take_closed(self) -> str:
        size, count = 0, 0
        for workflow_id in self._closed_pending:
            size += len(workflow_id.encode()) + 1
            if count and size > MAX_PAYLOAD:
                break
            count += 1
        taken, self._closed_pending = self._closed_pending[:count], self._closed_pending[count:]
        return "\n".join(taken)

    async def _resize(self, size: int) -> None:
        if size <= self._pool_size:
            return
        old, self._pool = self._pool, await self._create_pool(size)
        self._pool_size = size
        self._spawn(old.close())  # waits for the operations still using it

    async def _close(self) -> None:
        self._closing = True
        if self._running:
            await asyncio.wait(list(self._running), timeout=10)
        if self._listener is not None:
            listener, self._listener = self._listener, None
            with contextlib.suppress(Exception):
                await listener.close()
        if self._pool is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._pool.close(), 5)


async def _keep_session(conn: Connection) -> None:
    """Operations change no session state (no SET, LISTEN or session locks), so a released
    connection needs no reset query: one round trip less per operation."""


def _lock_key(call: _Call) -> str:
    """The workflow whose row an operation locks first: its first argument's (a task, a new
    workflow) or that argument itself (an id); "" when it names none."""
    first = call[1][0] if call[1] else None
    if isinstance(first, str):
        return first
    key = getattr(first, "workflow_id", "")
    return key if isinstance(key, str) else ""


def _closed() -> Outcome:
    return (False, LoomError("the PostgreSQL store was closed during the operation"))


def _failure(err: Exception) -> Outcome:
    """What the caller of a failed member gets: its error, or a Rollback's result."""
    return (True, err.result) if isinstance(err, Rollback) else (False, err)


async def _outcome_of(run: Coroutine[Any, Any, Any]) -> Outcome:
    try:
        return (True, await run)
    except Exception as err:
        return (False, err)


def _hand_back(done: asyncio.Task[Any], future: asyncio.Future[Any]) -> None:
    if done.cancelled():
        outcome = _closed()
    elif (error := done.exception()) is not None:
        outcome = (False, error)
    else:
        outcome = (True, done.result())
    hand_over([future], [outcome])
