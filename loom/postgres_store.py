"""PostgreSQL store (asyncpg): the scale-out backend, with SQLite's tables and semantics.

A DB thread runs an event loop that owns the connection pool and a LISTEN connection, so the
store serves callers on any event loop, as SQLite's writer thread does. Each operation is one
transaction on a pooled connection; tasks are claimed with `FOR UPDATE SKIP LOCKED`; commits
fence by deleting the task under its lease; `NOTIFY loom_tasks` wakes other processes' workers.

Lock order: a write on a workflow locks its `workflows` row before any of its task rows.
Claims lock task rows only and never wait for a workflow row, so the two cannot deadlock; the
rare cross-workflow cycle (a child closing while its parent cancels it) is retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

import asyncpg

from loom._json import JSON, dumps, loads
from loom.exceptions import (
    LoomError,
    WorkflowAlreadyExistsError,
    WorkflowClosedError,
    WorkflowNotFoundError,
)
from loom.history import CLOSING_KINDS, COMMAND_KINDS, Event, EventKind, NewEvent, WorkflowStatus
from loom.replay import ACTIVITY_TASK, WORKFLOW_TASK, Activation, ChildStart, workflow_task_key
from loom.sqlite_store import _WORKFLOW_COLUMNS, _outcome, _record, now_ms
from loom.store import (
    ClaimedTask,
    CommitResult,
    Completion,
    CursorLookup,
    Diagnosis,
    NewWorkflow,
    StepProgress,
    Store,
    StoreStats,
    TaskWorkflow,
    Wakeups,
    WorkflowRecord,
)

T = TypeVar("T")
Connection = Any  # asyncpg.Connection (asyncpg ships no type information)

logger = logging.getLogger("loom.postgres")

CHANNEL = "loom_tasks"
SCHEMA_COMPONENT = "loom"
MIGRATION_LOCK = 0x6C6F6F6D  # pg_advisory_xact_lock key shared with the registry ("loom")
DEFAULT_POOL_SIZE = 4
MAX_POOL_SIZE = 16
"""Per process: four workers at full concurrency stay well under max_connections = 100."""
RETRIES = 10
OPEN_TIMEOUT = 30.0
URL_SCHEMES = ("postgres://", "postgresql://")

MIGRATIONS: list[str] = [
    """
    CREATE TABLE IF NOT EXISTS workflows (
        workflow_id TEXT PRIMARY KEY,
        workflow_name TEXT NOT NULL,
        workflow_version TEXT NOT NULL,
        status TEXT NOT NULL,
        input TEXT NOT NULL,
        state TEXT NOT NULL,
        error TEXT,
        owner TEXT,
        agent TEXT,
        parent_id TEXT,
        parent_seq BIGINT,
        source_hash TEXT NOT NULL,
        current_step TEXT,
        step_description TEXT,
        step_index BIGINT NOT NULL DEFAULT 0,
        total_steps BIGINT NOT NULL,
        last_sequence BIGINT NOT NULL,
        processed_sequence BIGINT NOT NULL DEFAULT 0,
        epoch BIGINT NOT NULL DEFAULT 0,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS workflows_by_status ON workflows (status, workflow_name);
    CREATE INDEX IF NOT EXISTS workflows_by_owner ON workflows (owner, status);
    CREATE INDEX IF NOT EXISTS workflows_by_parent ON workflows (parent_id);
    CREATE TABLE IF NOT EXISTS events (
        workflow_id TEXT NOT NULL,
        sequence BIGINT NOT NULL,
        kind TEXT NOT NULL,
        payload TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        PRIMARY KEY (workflow_id, sequence)
    );
    CREATE TABLE IF NOT EXISTS tasks (
        task_id BIGSERIAL PRIMARY KEY,
        task_key TEXT NOT NULL UNIQUE,
        workflow_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        payload TEXT NOT NULL,
        run_at BIGINT NOT NULL,
        attempts BIGINT NOT NULL DEFAULT 0,
        lease_owner TEXT,
        lease_expires_at BIGINT
    );
    CREATE INDEX IF NOT EXISTS tasks_by_run_at ON tasks (run_at);
    CREATE INDEX IF NOT EXISTS tasks_by_owner ON tasks (lease_owner);
    CREATE INDEX IF NOT EXISTS tasks_by_workflow ON tasks (workflow_id);
    CREATE TABLE IF NOT EXISTS logs (
        log_id BIGSERIAL PRIMARY KEY,
        workflow_id TEXT NOT NULL,
        level TEXT NOT NULL,
        message TEXT NOT NULL,
        created_at BIGINT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS logs_by_workflow ON logs (workflow_id, log_id);
    """,
]

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
                now_ms(),
            )
    return len(MIGRATIONS)


_Op = Callable[..., Coroutine[Any, Any, Any]]


class _Database:
    """The DB thread: an event loop with the pool, the listener and the notifier."""

    def __init__(self, url: str, on_remote_tasks: Callable[[], None]) -> None:
        self._url = url
        self._on_remote_tasks = on_remote_tasks
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="loom-db:postgres", daemon=True
        )
        self._pool: Any = None
        self._pool_size = DEFAULT_POOL_SIZE
        self._listener: Connection | None = None
        self._listener_pid = 0
        self._running: set[asyncio.Task[Any]] = set()
        self._notifying = False
        self._notify_again = False
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
        await self._listen()

    async def _create_pool(self, size: int) -> Any:
        return await asyncpg.create_pool(self._url, min_size=1, max_size=size)

    async def _listen(self) -> None:
        try:
            listener = await asyncpg.connect(self._url)
            await listener.add_listener(CHANNEL, self._notified)
            listener.add_termination_listener(self._listener_lost)
        except (OSError, asyncpg.PostgresError) as err:
            logger.warning("LISTEN %s failed (%s); workers fall back to polling", CHANNEL, err)
            return
        self._listener, self._listener_pid = listener, listener.get_server_pid()

    def _notified(self, conn: Connection, pid: int, channel: str, payload: str) -> None:
        if pid != self._listener_pid:  # our own NOTIFY already woke this process
            self._on_remote_tasks()

    def _listener_lost(self, conn: Connection) -> None:
        self._listener = None
        if not self._closing:
            self._loop.call_later(1.0, self._spawn, self._listen())

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = self._loop.create_task(coro)
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        return task

    # -- called from other threads -------------------------------------------------------

    def submit(self, fn: _Op, args: tuple[Any, ...], write: bool) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._loop.call_soon_threadsafe(self._start, fn, args, write, future)
        return future

    def notify(self) -> None:
        """Send one NOTIFY soon; requests arriving while one is in flight coalesce."""
        with contextlib.suppress(RuntimeError):  # the loop is stopping
            self._loop.call_soon_threadsafe(self._request_notify)

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

    def _start(
        self, fn: _Op, args: tuple[Any, ...], write: bool, future: asyncio.Future[Any]
    ) -> None:
        task = self._spawn(self._run(fn, args, write))
        task.add_done_callback(lambda done: _hand_back(done, future))

    async def _run(self, fn: _Op, args: tuple[Any, ...], write: bool) -> Any:
        if self._closing:
            raise LoomError("the PostgreSQL store is closed")
        for attempt in range(RETRIES):
            pool = self._pool
            async with pool.acquire() as conn:
                if not write:
                    return await fn(conn, *args)
                try:
                    async with conn.transaction():
                        return await fn(conn, *args)
                except _RETRYABLE:
                    if attempt == RETRIES - 1:
                        raise
            await asyncio.sleep(0.005 * (attempt + 1))
        raise AssertionError("unreachable")

    def _request_notify(self) -> None:
        if self._notifying:
            self._notify_again = True
        elif self._listener is not None:
            self._notifying = True
            self._spawn(self._send_notify())

    async def _send_notify(self) -> None:
        try:
            while True:
                self._notify_again = False
                if self._listener is None:
                    return
                await self._listener.execute(f"NOTIFY {CHANNEL}")
                if not self._notify_again:
                    return
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as err:
            logger.warning("NOTIFY %s failed: %s", CHANNEL, err)
        finally:
            self._notifying = False

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


def _hand_back(done: asyncio.Task[Any], future: asyncio.Future[Any]) -> None:
    loop = future.get_loop()
    if loop.is_closed():
        return
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(_deliver, done, future)


def _deliver(done: asyncio.Task[Any], future: asyncio.Future[Any]) -> None:
    if future.cancelled():
        return
    if done.cancelled():
        future.set_exception(LoomError("the PostgreSQL store was closed during the operation"))
    elif (error := done.exception()) is not None:
        future.set_exception(error)
    else:
        future.set_result(done.result())


class _Wakeups(Wakeups):
    """In-process wakeups that also NOTIFY other processes when tasks become runnable."""

    def __init__(self) -> None:
        super().__init__()
        self.notify: Callable[[], None] = lambda: None

    def tasks_ready(self) -> None:
        super().tasks_ready()
        self.notify()

    def remote_tasks_ready(self) -> None:
        super().tasks_ready()


class PostgresStore(Store):
    """The scale-out store: many worker processes on many hosts share one PostgreSQL."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.wakeups = wakeups = _Wakeups()
        self._db = _Database(url, wakeups.remote_tasks_ready)
        wakeups.notify = self._db.notify
        self._closed = False

    async def _write(self, fn: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
        result: T = await self._db.submit(fn, args, True)
        return result

    async def _read(self, fn: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
        result: T = await self._db.submit(fn, args, False)
        return result

    async def reserve(self, concurrency: int) -> None:
        await asyncio.get_running_loop().run_in_executor(
            None, self._db.resize, max(DEFAULT_POOL_SIZE, min(concurrency + 2, MAX_POOL_SIZE))
        )

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await asyncio.get_running_loop().run_in_executor(None, self._db.stop)

    def close_sync(self) -> None:
        if not self._closed:
            self._closed = True
            self._db.stop()

    # -- operations (wakeups as in SQLiteStore) -----------------------------------------

    async def create_workflow(self, spec: NewWorkflow) -> tuple[WorkflowRecord, bool]:
        result = await self._write(_create_workflow, spec, now_ms())
        if result[1]:
            self.wakeups.tasks_ready()
            self.wakeups.progress_changed()
        return result

    async def claim_tasks(
        self, owner: str, limit: int, lease_ms: int, cursor_of: CursorLookup
    ) -> list[ClaimedTask]:
        return await self._write(_claim_tasks, owner, limit, lease_ms, cursor_of, now_ms())

    async def commit_workflow_task(
        self,
        task: ClaimedTask,
        activation: Activation,
        seen_sequence: int,
        step: StepProgress | None,
        *,
        eager_lease_ms: int = 0,
    ) -> CommitResult:
        result = await self._write(
            _commit_workflow_task, task, activation, seen_sequence, step, eager_lease_ms, now_ms()
        )
        if result.is_committed:
            if (
                len(result.tasks) < len(activation.tasks)
                or activation.children
                or result.needs_rerun
            ):
                self.wakeups.tasks_ready()
            self._after_commit(task, activation)
        return result

    def _after_commit(self, task: ClaimedTask, activation: Activation) -> None:
        if activation.status is not WorkflowStatus.RUNNING:
            self.wakeups.workflow_closed(task.workflow_id, _outcome(activation))
            self.wakeups.tasks_ready()
        self.wakeups.progress_changed()

    async def complete_and_continue(
        self,
        task: ClaimedTask,
        result: NewEvent,
        expected: tuple[int, int],
        activation: Activation,
        step: StepProgress | None,
        *,
        at: int,
        eager_lease_ms: int = 0,
    ) -> CommitResult:
        done = await self._write(
            _complete_and_continue, task, result, expected, activation, step, eager_lease_ms, at
        )
        if not done.is_committed or done.needs_rerun:
            self.wakeups.tasks_ready()
        if done.is_committed:
            self._after_commit(task, activation)
        return done

    async def complete_activity(
        self,
        task: ClaimedTask,
        kind: EventKind,
        payload: dict[str, JSON],
        *,
        continue_with: CursorLookup | None = None,
        lease_ms: int = 0,
    ) -> Completion:
        event = NewEvent(kind, payload)
        done = await self._write(_complete_task, task, event, continue_with, lease_ms, now_ms())
        if done.is_recorded and done.next_task is None:
            self.wakeups.tasks_ready()
        return done

    async def retry_activity(
        self, task: ClaimedTask, run_at: int, payload: dict[str, JSON], error: str
    ) -> bool:
        ok = await self._write(_retry_activity, task, run_at, payload, error, now_ms())
        if ok:
            self.wakeups.tasks_ready()
        return ok

    async def fire_timer(
        self, task: ClaimedTask, *, continue_with: CursorLookup | None = None, lease_ms: int = 0
    ) -> Completion:
        event = NewEvent(EventKind.TIMER_FIRED, {"seq": task.payload["seq"]})
        done = await self._write(_complete_task, task, event, continue_with, lease_ms, now_ms())
        if done.is_recorded and done.next_task is None:
            self.wakeups.tasks_ready()
        return done

    async def signal_workflow(self, workflow_id: str, name: str, payload: JSON) -> None:
        event = NewEvent(EventKind.SIGNAL_RECEIVED, {"name": name, "payload": payload})
        await self._write(_append_external, workflow_id, event, "receive signals", now_ms())
        self.wakeups.tasks_ready()

    async def cancel_workflow(self, workflow_id: str, reason: str | None) -> bool:
        event = NewEvent(EventKind.CANCEL_REQUESTED, {"reason": reason})
        try:
            await self._write(_append_external, workflow_id, event, "be cancelled", now_ms())
        except WorkflowClosedError:
            return False
        self.wakeups.tasks_ready()
        return True

    async def extend_leases(self, owner: str, lease_ms: int) -> None:
        await self._write(_extend_leases, owner, lease_ms, now_ms())

    async def release_tasks(self, owner: str) -> None:
        await self._write(_release_tasks, owner, now_ms())
        self.wakeups.tasks_ready()

    async def get_workflow(self, workflow_id: str) -> WorkflowRecord | None:
        return await self._read(_get_workflow, workflow_id)

    async def get_workflows(self, workflow_ids: Sequence[str]) -> list[WorkflowRecord]:
        return await self._read(_get_workflows, list(workflow_ids))

    async def get_statuses(self, workflow_ids: Sequence[str]) -> dict[str, WorkflowStatus]:
        return await self._read(_get_statuses, list(workflow_ids))

    async def list_events(self, workflow_id: str) -> list[Event]:
        return await self._read(_load_events, workflow_id, 0)

    async def list_workflows(
        self,
        *,
        status: WorkflowStatus | None = None,
        name: str | None = None,
        owner: str | None = None,
        statuses: Sequence[WorkflowStatus] | None = None,
        limit: int = 100,
    ) -> list[WorkflowRecord]:
        wanted = list(statuses or ([status] if status else []))
        return await self._read(_list_workflows, wanted, name, owner, limit)

    async def list_logs(self, workflow_id: str) -> list[tuple[int, str, str]]:
        return await self._read(_list_logs, workflow_id)

    async def count_tasks(self) -> dict[str, int]:
        return await self._read(_count_tasks, now_ms())

    async def collect_stats(self) -> StoreStats:
        return await self._read(_collect_stats, now_ms())

    async def diagnose(self) -> Diagnosis:
        return await self._read(_diagnose, now_ms())


# -- reads ---------------------------------------------------------------------------------


async def _get_workflow(conn: Connection, workflow_id: str) -> WorkflowRecord | None:
    row = await conn.fetchrow(
        f"SELECT {_WORKFLOW_COLUMNS} FROM workflows WHERE workflow_id = $1", workflow_id
    )
    return _record(row) if row else None


async def _get_workflows(conn: Connection, workflow_ids: list[str]) -> list[WorkflowRecord]:
    rows = await conn.fetch(
        f"SELECT {_WORKFLOW_COLUMNS} FROM workflows WHERE workflow_id = ANY($1::text[])",
        workflow_ids,
    )
    return [_record(row) for row in rows]


async def _get_statuses(conn: Connection, workflow_ids: list[str]) -> dict[str, WorkflowStatus]:
    rows = await conn.fetch(
        "SELECT workflow_id, status FROM workflows WHERE workflow_id = ANY($1::text[])",
        workflow_ids,
    )
    return {row[0]: WorkflowStatus(row[1]) for row in rows}


async def _list_workflows(
    conn: Connection,
    statuses: list[WorkflowStatus],
    name: str | None,
    owner: str | None,
    limit: int,
) -> list[WorkflowRecord]:
    clauses: list[str] = []
    params: list[Any] = []
    if statuses:
        params.append([str(s) for s in statuses])
        clauses.append(f"status = ANY(${len(params)}::text[])")
    if name:
        params.append(name)
        clauses.append(f"workflow_name = ${len(params)}")
    if owner:
        params.append(owner)
        clauses.append(f"owner = ${len(params)}")
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    params.append(limit)
    rows = await conn.fetch(
        f"SELECT {_WORKFLOW_COLUMNS} FROM workflows {where} "
        f"ORDER BY created_at DESC, workflow_id LIMIT ${len(params)}",
        *params,
    )
    return [_record(row) for row in rows]


async def _list_logs(conn: Connection, workflow_id: str) -> list[tuple[int, str, str]]:
    rows = await conn.fetch(
        "SELECT created_at, level, message FROM logs WHERE workflow_id = $1 ORDER BY log_id",
        workflow_id,
    )
    return [(int(r[0]), str(r[1]), str(r[2])) for r in rows]


async def _count_tasks(conn: Connection, now: int) -> dict[str, int]:
    row = await conn.fetchrow(
        "SELECT "
        "COALESCE(SUM(CASE WHEN lease_owner IS NOT NULL AND lease_expires_at >= $1 THEN 1 END),0),"
        "COALESCE(SUM(CASE WHEN lease_owner IS NOT NULL AND lease_expires_at < $1 THEN 1 END),0),"
        "COALESCE(SUM(CASE WHEN lease_owner IS NULL THEN 1 END), 0) FROM tasks",
        now,
    )
    return {"leased": int(row[0]), "expired": int(row[1]), "queued": int(row[2])}


async def _load_events(conn: Connection, workflow_id: str, after: int) -> list[Event]:
    rows = await conn.fetch(
        "SELECT sequence, kind, payload, created_at FROM events "
        "WHERE workflow_id = $1 AND sequence > $2 ORDER BY sequence",
        workflow_id,
        after,
    )
    return [Event(r[0], EventKind(r[1]), loads(r[2]), r[3]) for r in rows]


# -- workflows and tasks -------------------------------------------------------------------


async def _insert_workflow(conn: Connection, spec: NewWorkflow, now: int) -> bool:
    """Insert the row, its WORKFLOW_STARTED event and first task in one statement."""
    started: dict[str, JSON] = {
        "input": spec.input,
        "seed": spec.seed,
        "workflow_name": spec.workflow_name,
        "workflow_version": spec.workflow_version,
        "source_hash": spec.source_hash,
    }
    if spec.parent_id:
        started["parent_id"] = spec.parent_id
    inserted = await conn.fetchval(
        "WITH w AS (INSERT INTO workflows (workflow_id, workflow_name, workflow_version, status, "
        "input, state, owner, agent, parent_id, parent_seq, source_hash, total_steps, "
        "last_sequence, created_at, updated_at) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 1, $13, $13) "
        "ON CONFLICT (workflow_id) DO NOTHING RETURNING workflow_id), "
        "e AS (INSERT INTO events (workflow_id, sequence, kind, payload, created_at) "
        "SELECT workflow_id, 1, $14, $15, $13 FROM w), "
        "t AS (INSERT INTO tasks (task_key, workflow_id, kind, payload, run_at) "
        "SELECT $16, workflow_id, $17, '{}', $13 FROM w ON CONFLICT (task_key) DO NOTHING) "
        "SELECT COUNT(*) FROM w",
        spec.workflow_id,
        spec.workflow_name,
        spec.workflow_version,
        WorkflowStatus.PENDING.value,
        dumps(spec.input),
        dumps(spec.state),
        spec.owner,
        spec.agent,
        spec.parent_id,
        spec.parent_seq,
        spec.source_hash,
        spec.total_steps,
        now,
        EventKind.WORKFLOW_STARTED.value,
        dumps(started),
        workflow_task_key(spec.workflow_id),
        WORKFLOW_TASK,
    )
    return bool(inserted)


async def _create_workflow(
    conn: Connection, spec: NewWorkflow, now: int
) -> tuple[WorkflowRecord, bool]:
    if not await _insert_workflow(conn, spec, now):
        existing = await _get_workflow(conn, spec.workflow_id)
        assert existing is not None  # workflows are never deleted
        if existing.workflow_name != spec.workflow_name:
            raise WorkflowAlreadyExistsError(
                spec.workflow_id, existing.workflow_name, spec.workflow_name
            )
        return existing, False
    record = WorkflowRecord(
        workflow_id=spec.workflow_id,
        workflow_name=spec.workflow_name,
        workflow_version=spec.workflow_version,
        status=WorkflowStatus.PENDING,
        input=spec.input,
        state=spec.state,
        error=None,
        owner=spec.owner,
        agent=spec.agent,
        parent_id=spec.parent_id,
        current_step=None,
        step_description=None,
        step_index=0,
        total_steps=spec.total_steps,
        last_sequence=1,
        processed_sequence=0,
        epoch=0,
        created_at=now,
        updated_at=now,
    )
    return record, True


async def _ensure_workflow_task(conn: Connection, workflow_id: str, now: int) -> None:
    await conn.execute(
        "INSERT INTO tasks (task_key, workflow_id, kind, payload, run_at) "
        "VALUES ($1, $2, $3, '{}', $4) ON CONFLICT (task_key) DO NOTHING",
        workflow_task_key(workflow_id),
        workflow_id,
        WORKFLOW_TASK,
        now,
    )


async def _claim_tasks(
    conn: Connection,
    owner: str,
    limit: int,
    lease_ms: int,
    cursor_of: CursorLookup,
    now: int,
) -> list[ClaimedTask]:
    # A leased task's run_at is its lease expiry, so one index finds due and expired tasks;
    # SKIP LOCKED lets concurrent claimers take disjoint batches without waiting.
    rows = await conn.fetch(
        "UPDATE tasks SET lease_owner = $1, lease_expires_at = $2, run_at = $2, "
        "attempts = attempts + 1 WHERE task_id IN "
        "(SELECT task_id FROM tasks WHERE run_at <= $3 ORDER BY run_at LIMIT $4 "
        "FOR UPDATE SKIP LOCKED) "
        "RETURNING task_id, task_key, kind, workflow_id, payload, attempts",
        owner,
        now + lease_ms,
        now,
        limit,
    )
    claimed = [
        ClaimedTask(task_id, key, kind, workflow_id, loads(payload), attempts, owner)
        for task_id, key, kind, workflow_id, payload, attempts in rows
    ]
    workflow_tasks = [task for task in claimed if task.kind == WORKFLOW_TASK]
    if not workflow_tasks:
        return claimed
    dropped = await _attach_histories(conn, workflow_tasks, cursor_of)
    return [task for task in claimed if task.task_id not in dropped]


async def _attach_histories(
    conn: Connection, tasks: list[ClaimedTask], cursor_of: CursorLookup
) -> set[int]:
    """Load what each workflow task needs (only unseen events when the caller's cache is
    current) in two queries; drop tasks of finished workflows. Returns the dropped ids."""
    rows = await conn.fetch(
        "SELECT workflow_id, workflow_name, status, epoch, processed_sequence, owner "
        "FROM workflows WHERE workflow_id = ANY($1::text[])",
        [task.workflow_id for task in tasks],
    )
    workflows = {row[0]: row for row in rows}
    dropped: set[int] = set()
    after: dict[str, int] = {}
    for task in tasks:
        row = workflows.get(task.workflow_id)
        if row is None or WorkflowStatus(row[2]).is_closed:
            dropped.add(task.task_id)
            continue
        cached = cursor_of(task.workflow_id)
        after[task.workflow_id] = cached[0] if cached is not None and cached[1] == row[3] else 0
        task.workflow = TaskWorkflow(row[1], row[3], row[4], row[5])
        task.is_full_history = after[task.workflow_id] == 0
        task.events = []
    if dropped:
        await conn.execute("DELETE FROM tasks WHERE task_id = ANY($1::bigint[])", list(dropped))
    if after:
        events = await conn.fetch(
            "SELECT e.workflow_id, e.sequence, e.kind, e.payload, e.created_at FROM events e "
            "JOIN unnest($1::text[], $2::bigint[]) AS c (workflow_id, after) "
            "ON e.workflow_id = c.workflow_id AND e.sequence > c.after "
            "ORDER BY e.workflow_id, e.sequence",
            list(after),
            list(after.values()),
        )
        by_workflow: dict[str, list[Event]] = {}
        for r in events:
            by_workflow.setdefault(r[0], []).append(Event(r[1], EventKind(r[2]), loads(r[3]), r[4]))
        for task in tasks:
            if task.task_id not in dropped:
                task.events = by_workflow.get(task.workflow_id, [])
    return dropped


async def _lock_leased(conn: Connection, task: ClaimedTask) -> asyncpg.Record | None:
    """Lock the workflow row, then delete the task if this claim still holds it.

    (owner, attempts) identifies one claim: a re-claim after expiry bumps attempts, so a
    reclaimed task matches no row; the task row is the exactly-once guard. Returns the
    workflow's (last_sequence, epoch, status), or None when the lease was lost.
    """
    workflow = await conn.fetchrow(
        "SELECT last_sequence, epoch, status FROM workflows WHERE workflow_id = $1 FOR UPDATE",
        task.workflow_id,
    )
    deleted = await conn.fetchval(
        "DELETE FROM tasks WHERE task_id = $1 AND lease_owner = $2 AND attempts = $3 RETURNING 1",
        task.task_id,
        task.owner,
        task.attempt,
    )
    if deleted is None or workflow is None:
        return None
    return workflow


async def _append_events(
    conn: Connection,
    workflow_id: str,
    events: Sequence[NewEvent],
    now: int,
    *,
    open_only: bool = False,
) -> TaskWorkflow | None:
    """Append after the last event (None: the workflow is missing or, if `open_only`, closed)."""
    guard = " AND status IN ('PENDING', 'RUNNING')" if open_only else ""
    row = await conn.fetchrow(
        "UPDATE workflows SET last_sequence = last_sequence + $1, updated_at = $2 "
        f"WHERE workflow_id = $3{guard} "
        "RETURNING last_sequence, workflow_name, epoch, processed_sequence, owner",
        len(events),
        now,
        workflow_id,
    )
    if row is None:
        return None
    await _insert_events(conn, workflow_id, int(row[0]) - len(events), events, now)
    return TaskWorkflow(row[1], row[2], row[3], row[4])


async def _insert_events(
    conn: Connection, workflow_id: str, after: int, events: Sequence[NewEvent], now: int
) -> None:
    await conn.execute(
        "INSERT INTO events (workflow_id, sequence, kind, payload, created_at) "
        "SELECT $1, $2 + n, kind, payload, $3 "
        "FROM unnest($4::text[], $5::text[]) WITH ORDINALITY AS e (kind, payload, n)",
        workflow_id,
        after,
        now,
        [e.kind.value for e in events],
        [dumps(e.payload) for e in events],
    )


async def _commit_workflow_task(
    conn: Connection,
    task: ClaimedTask,
    activation: Activation,
    seen_sequence: int,
    step: StepProgress | None,
    eager_lease_ms: int,
    now: int,
) -> CommitResult:
    if await _lock_leased(conn, task) is None:
        return CommitResult(is_committed=False)
    return await _write_activation(
        conn, task, activation, (), seen_sequence, step, eager_lease_ms, now
    )


async def _write_activation(
    conn: Connection,
    task: ClaimedTask,
    activation: Activation,
    leading: Sequence[NewEvent],
    processed_sequence: int,
    step: StepProgress | None,
    eager_lease_ms: int,
    now: int,
) -> CommitResult:
    """Append `leading` events, then the activation's, and apply its effects."""
    workflow_id = task.workflow_id
    events = [*leading, *activation.events]
    row = await conn.fetchrow(
        "UPDATE workflows SET last_sequence = last_sequence + $1, status = $2, state = $3, "
        "error = $4, step_index = $5, current_step = COALESCE($6, current_step), "
        "step_description = COALESCE($7, step_description), processed_sequence = $8, "
        "epoch = epoch + 1, updated_at = $9 WHERE workflow_id = $10 "
        "RETURNING last_sequence, epoch, parent_id, parent_seq",
        len(events),
        activation.status.value,
        dumps(activation.state),
        dumps(activation.error) if activation.error else None,
        activation.step_index,
        step.name if step else None,
        step.description if step else None,
        processed_sequence,
        now,
        workflow_id,
    )
    last_sequence, epoch = int(row[0]), int(row[1])
    previous_last = last_sequence - len(events) + len(leading)
    if events:
        await _insert_events(conn, workflow_id, last_sequence - len(events), events, now)
    closed = activation.status is not WorkflowStatus.RUNNING
    eager = await _insert_tasks(conn, task, activation, 0 if closed else eager_lease_ms, now)
    if activation.cancel_task_keys:
        await conn.execute(
            "DELETE FROM tasks WHERE task_key = ANY($1::text[])", list(activation.cancel_task_keys)
        )
    for child in activation.children:
        await _start_child(conn, task, child, now)
    if activation.logs:
        await conn.execute(
            "INSERT INTO logs (workflow_id, level, message, created_at) "
            "SELECT $1, level, message, at FROM unnest($2::text[], $3::text[], $4::bigint[]) "
            "AS l (level, message, at)",
            workflow_id,
            [level for level, _, _ in activation.logs],
            [message for _, message, _ in activation.logs],
            [at or now for _, _, at in activation.logs],
        )
    if closed:
        await _close_workflow(conn, workflow_id, row[2], row[3], activation, now)
        return CommitResult(is_committed=True, epoch=epoch, last_sequence=last_sequence)
    if previous_last > processed_sequence:
        # Events arrived while this task ran: schedule the workflow again to process them.
        await _ensure_workflow_task(conn, workflow_id, now)
        return CommitResult(
            is_committed=True,
            needs_rerun=True,
            epoch=epoch,
            tasks=eager,
            last_sequence=last_sequence,
        )
    return CommitResult(is_committed=True, epoch=epoch, tasks=eager, last_sequence=last_sequence)


async def _complete_and_continue(
    conn: Connection,
    task: ClaimedTask,
    result: NewEvent,
    expected: tuple[int, int],
    activation: Activation,
    step: StepProgress | None,
    eager_lease_ms: int,
    now: int,
) -> CommitResult:
    """Record an activity result and the activation it led to, if nothing else happened.

    The workflow row is locked before the checks, and every writer of a workflow's events
    or workflow task locks it too, so nothing can slip in between check and write.
    """
    workflow = await _lock_leased(conn, task)
    if workflow is None:
        return CommitResult(is_committed=False, is_recorded=False)
    if WorkflowStatus(workflow[2]).is_closed:
        return CommitResult(is_committed=False)
    workflow_id = task.workflow_id
    pending = await conn.fetchval(
        "SELECT 1 FROM tasks WHERE task_key = $1", workflow_task_key(workflow_id)
    )
    if (workflow[0], workflow[1]) != expected or pending is not None:
        await _append_events(conn, workflow_id, [result], now)
        await _ensure_workflow_task(conn, workflow_id, now)
        return CommitResult(is_committed=False)
    return await _write_activation(
        conn, task, activation, [result], expected[0] + 1, step, eager_lease_ms, now
    )


async def _insert_tasks(
    conn: Connection,
    task: ClaimedTask,
    activation: Activation,
    eager_lease_ms: int,
    now: int,
) -> tuple[ClaimedTask, ...]:
    """Create the activation's tasks; activity tasks leased to `task.owner` when eager."""
    workflow_id = task.workflow_id
    lazy = [t for t in activation.tasks if not eager_lease_ms or t.kind != ACTIVITY_TASK]
    if lazy:
        await conn.execute(
            "INSERT INTO tasks (task_key, workflow_id, kind, payload, run_at) "
            "SELECT key, $1, kind, payload, run_at "
            "FROM unnest($2::text[], $3::text[], $4::text[], $5::bigint[]) "
            "AS t (key, kind, payload, run_at) ON CONFLICT (task_key) DO NOTHING",
            workflow_id,
            [t.key for t in lazy],
            [t.kind for t in lazy],
            [dumps(t.payload) for t in lazy],
            [t.run_at or now for t in lazy],
        )
    specs = {t.key: t for t in activation.tasks if eager_lease_ms and t.kind == ACTIVITY_TASK}
    if not specs:
        return ()
    expires = now + eager_lease_ms
    rows = await conn.fetch(
        "INSERT INTO tasks (task_key, workflow_id, kind, payload, run_at, attempts, "
        "lease_owner, lease_expires_at) SELECT key, $1, $2, payload, $3, 1, $4, $3 "
        "FROM unnest($5::text[], $6::text[]) AS t (key, payload) "
        "ON CONFLICT (task_key) DO NOTHING RETURNING task_id, task_key",
        workflow_id,
        ACTIVITY_TASK,
        expires,
        task.owner,
        list(specs),
        [dumps(t.payload) for t in specs.values()],
    )
    ids = {row[1]: row[0] for row in rows}
    return tuple(
        ClaimedTask(ids[key], key, spec.kind, workflow_id, spec.payload, 1, task.owner)
        for key, spec in specs.items()
        if key in ids
    )


async def _start_child(conn: Connection, task: ClaimedTask, child: ChildStart, now: int) -> None:
    parent = task.workflow
    await _insert_workflow(
        conn,
        NewWorkflow(
            workflow_id=child.workflow_id,
            workflow_name=child.workflow_name,
            workflow_version=child.workflow_version,
            input=child.input,
            state=child.state,
            source_hash=child.source_hash,
            total_steps=child.total_steps,
            seed=child.seed,
            owner=parent.owner if parent else None,
            parent_id=task.workflow_id,
            parent_seq=child.parent_seq,
        ),
        now,
    )


async def _close_workflow(
    conn: Connection,
    workflow_id: str,
    parent_id: str | None,
    parent_seq: int | None,
    activation: Activation,
    now: int,
) -> None:
    await conn.execute("DELETE FROM tasks WHERE workflow_id = $1", workflow_id)
    if parent_id:
        base: dict[str, JSON] = {"seq": parent_seq, "workflow_id": workflow_id}
        if activation.status is WorkflowStatus.COMPLETED:
            event = NewEvent(EventKind.CHILD_COMPLETED, {**base, "state": activation.state})
        else:
            event = NewEvent(EventKind.CHILD_FAILED, {**base, "error": activation.error})
        await _append_to_open(conn, parent_id, event, now)
    if activation.status is WorkflowStatus.CANCELED:
        children = await conn.fetch(
            "SELECT workflow_id FROM workflows WHERE parent_id = $1 AND status = ANY($2::text[])",
            workflow_id,
            [WorkflowStatus.PENDING.value, WorkflowStatus.RUNNING.value],
        )
        reason = {"reason": f"parent workflow {workflow_id!r} was cancelled"}
        for (child_id,) in children:
            await _append_to_open(conn, child_id, NewEvent(EventKind.CANCEL_REQUESTED, reason), now)


async def _append_to_open(conn: Connection, workflow_id: str, event: NewEvent, now: int) -> bool:
    if await _append_events(conn, workflow_id, [event], now, open_only=True) is None:
        return False
    await _ensure_workflow_task(conn, workflow_id, now)
    return True


async def _complete_task(
    conn: Connection,
    task: ClaimedTask,
    event: NewEvent,
    continue_with: CursorLookup | None,
    lease_ms: int,
    now: int,
) -> Completion:
    """Record an activity outcome or timer firing exactly once (the task row is the guard)."""
    if await _lock_leased(conn, task) is None:
        return Completion(is_recorded=False)
    workflow_id = task.workflow_id
    workflow = await _append_events(conn, workflow_id, [event], now, open_only=True)
    if workflow is None:
        return Completion(is_recorded=True)  # the workflow already finished: nothing to wake
    cached = None if continue_with is None else continue_with(workflow_id)
    if cached is None:
        await _ensure_workflow_task(conn, workflow_id, now)
        return Completion(is_recorded=True)
    # The caller holds the live run: lease its workflow task here unless someone else has it.
    expires = now + lease_ms
    key = workflow_task_key(workflow_id)
    row = await conn.fetchrow(
        "INSERT INTO tasks (task_key, workflow_id, kind, payload, run_at, attempts, lease_owner, "
        "lease_expires_at) VALUES ($1, $2, $3, '{}', $4, 1, $5, $4) ON CONFLICT (task_key) "
        "DO UPDATE SET lease_owner = excluded.lease_owner, attempts = tasks.attempts + 1, "
        "run_at = excluded.run_at, lease_expires_at = excluded.lease_expires_at "
        "WHERE tasks.lease_owner IS NULL OR tasks.lease_expires_at < $6 "
        "RETURNING task_id, attempts",
        key,
        workflow_id,
        WORKFLOW_TASK,
        expires,
        task.owner,
        now,
    )
    if row is None:
        return Completion(is_recorded=True)
    claimed = ClaimedTask(row[0], key, WORKFLOW_TASK, workflow_id, {}, row[1], task.owner)
    after = cached[0] if cached[1] == workflow.epoch else 0
    claimed.workflow = workflow
    claimed.is_full_history = after == 0
    claimed.events = await _load_events(conn, workflow_id, after)
    return Completion(is_recorded=True, next_task=claimed)


async def _retry_activity(
    conn: Connection,
    task: ClaimedTask,
    run_at: int,
    payload: dict[str, JSON],
    error: str,
    now: int,
) -> bool:
    released = await conn.fetchval(
        "UPDATE tasks SET lease_owner = NULL, lease_expires_at = NULL, run_at = $1, payload = $2 "
        "WHERE task_id = $3 AND lease_owner = $4 AND attempts = $5 RETURNING 1",
        run_at,
        dumps(payload),
        task.task_id,
        task.owner,
        task.attempt,
    )
    if released is None:
        return False
    await conn.execute(
        "INSERT INTO logs (workflow_id, level, message, created_at) VALUES ($1, 'WARNING', $2, $3)",
        task.workflow_id,
        error,
        now,
    )
    return True


async def _append_external(
    conn: Connection, workflow_id: str, event: NewEvent, action: str, now: int
) -> None:
    status = await conn.fetchval(
        "SELECT status FROM workflows WHERE workflow_id = $1 FOR UPDATE", workflow_id
    )
    if status is None:
        raise WorkflowNotFoundError(workflow_id)
    if WorkflowStatus(status).is_closed:
        raise WorkflowClosedError(workflow_id, status, action)
    await _append_events(conn, workflow_id, [event], now)
    await _ensure_workflow_task(conn, workflow_id, now)


async def _extend_leases(conn: Connection, owner: str, lease_ms: int, now: int) -> None:
    # SKIP LOCKED: a row locked now is being finished or re-leased by someone; waiting for
    # it could only add a lock cycle.
    await conn.execute(
        "UPDATE tasks SET lease_expires_at = $1, run_at = $1 WHERE task_id IN "
        "(SELECT task_id FROM tasks WHERE lease_owner = $2 FOR UPDATE SKIP LOCKED)",
        now + lease_ms,
        owner,
    )


async def _release_tasks(conn: Connection, owner: str, now: int) -> None:
    await conn.execute(
        "UPDATE tasks SET lease_owner = NULL, lease_expires_at = NULL, run_at = $1 "
        "WHERE lease_owner = $2",
        now,
        owner,
    )


# -- operator views (read-only) ------------------------------------------------------------


async def _collect_stats(conn: Connection, now: int) -> StoreStats:
    workflows = {status.value: 0 for status in WorkflowStatus}
    for status, count in await conn.fetch("SELECT status, COUNT(*) FROM workflows GROUP BY status"):
        workflows[str(status)] = int(count)
    row = await conn.fetchrow(
        "SELECT "
        "COALESCE(SUM(CASE WHEN lease_owner IS NULL AND run_at <= $1 THEN 1 ELSE 0 END), 0), "
        "COALESCE(SUM(CASE WHEN lease_owner IS NULL AND run_at > $1 THEN 1 ELSE 0 END), 0), "
        "COALESCE(SUM(CASE WHEN lease_owner IS NOT NULL AND lease_expires_at >= $1 "
        "THEN 1 ELSE 0 END), 0), "
        "COALESCE(SUM(CASE WHEN lease_owner IS NOT NULL AND lease_expires_at < $1 "
        "THEN 1 ELSE 0 END), 0) FROM tasks",
        now,
    )
    tasks = dict(zip(("due", "scheduled", "leased", "expired"), map(int, row), strict=True))
    return StoreStats(workflows=workflows, tasks=tasks)


async def _diagnose(conn: Connection, now: int) -> Diagnosis:
    settings = {
        name: str(await conn.fetchval(f"SHOW {name}"))
        for name in ("server_version", "synchronous_commit", "fsync", "max_connections")
    }
    version = await conn.fetchval(
        "SELECT COALESCE(MAX(version), 0) FROM schema_migrations WHERE component = $1",
        SCHEMA_COMPONENT,
    )
    expired = await conn.fetch(
        "SELECT task_id, workflow_id, lease_owner FROM tasks "
        "WHERE lease_owner IS NOT NULL AND lease_expires_at < $1 ORDER BY task_id",
        now,
    )
    # Open, no task row, and an event the code has not seen yet: nothing will ever run it.
    delivered = [k.value for k in EventKind if k not in COMMAND_KINDS and k not in CLOSING_KINDS]
    without_task = (
        "FROM workflows w WHERE w.status = ANY($1::text[]) "
        "AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.workflow_id = w.workflow_id)"
    )
    open_statuses = [WorkflowStatus.PENDING.value, WorkflowStatus.RUNNING.value]
    stuck = await conn.fetch(
        f"SELECT w.workflow_id {without_task} AND EXISTS (SELECT 1 FROM events e "
        "WHERE e.workflow_id = w.workflow_id AND e.sequence > w.processed_sequence "
        "AND e.kind = ANY($2::text[])) ORDER BY w.created_at",
        open_statuses,
        delivered,
    )
    waiting = await conn.fetchval(f"SELECT COUNT(*) {without_task}", open_statuses)
    return Diagnosis(
        backend="postgresql",
        settings=settings,
        schema_version=int(version),
        latest_schema_version=len(MIGRATIONS),
        expired_leases=[(int(r[0]), str(r[1]), str(r[2])) for r in expired],
        stuck=[str(r[0]) for r in stuck],
        idle=int(waiting) - len(stuck),
    )
