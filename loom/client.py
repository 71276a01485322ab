"""Client side: configuration, starting workflows and `WorkflowHandle`.

Holds the process-wide store per database so in-process workers wake at once.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Generic, TypeVar

from opentelemetry.trace import SpanKind

from loom import telemetry
from loom._json import JSON, is_json
from loom.definition import WorkflowDefinition, compiled_workflow
from loom.exceptions import WorkflowNotFoundError, WorkflowStillRunningError
from loom.history import OPERATOR_SUSPENSION, WorkflowStatus
from loom.limits import Limits, clip
from loom.replay import decode_error
from loom.store import NewWorkflow, Outcome, Store, WorkflowRecord

StateT = TypeVar("StateT")

DEFAULT_DATABASE = "./loom.db"
POLL_INTERVAL = 0.1
"""First fallback poll for closes made in other processes (in-process closes wake at once);
on a store that numbers its closes (SQLite) every poll, which reads no rows while no other
process has committed."""
MAX_POLL_INTERVAL = 1.0
"""The status poll (stores that do not number closes) backs off to this while rounds find
nothing closed: each reads the status of every waiter, and at 10,000 waiters it was 15% of
the CPU."""
PUSHED_POLL_INTERVAL = 5.0
"""Safety-net poll when the store pushes every process's closes (PostgreSQL LISTEN)."""
UNNUMBERED_POLL_INTERVAL = 30.0
"""Where closes are numbered, the status of every waiter is still read this often: a worker
process of a version before the numbering closes without a number (a rolling upgrade)."""
CLOSE_SCAN_LIMIT = 1000
"""Closes one `closed_since` read returns; more are read at once by the next."""

_configured: str | None = None
_configured_limits: Limits | None = None
_stores: dict[str, Store] = {}
_lock = threading.Lock()


def configure(
    *, database: str | os.PathLike[str] | None = None, limits: Limits | None = None
) -> None:
    """Choose the database for this process (else `LOOM_DATABASE`, else ./loom.db).

    A SQLite file path, or `postgresql://user@host:port/dbname` for the scale-out backend
    (many worker processes on many hosts; `?search_path=schema` selects a schema). Stores
    opened for other databases are closed.

    `limits` bounds what this process's starts and signals may send (workflow input, signal
    payloads); None means `Limits.from_env()`. Workers take their own `limits=`.
    """
    global _configured, _configured_limits
    _configured = None if database is None else os.fspath(database)
    _configured_limits = limits
    with _lock:
        for key in list(_stores):
            if key != _resolve(_configured):
                store = _stores.pop(key)
                close_sync = getattr(store, "close_sync", None)
                if close_sync is not None:
                    close_sync()


def database_url(database: str | os.PathLike[str] | None = None) -> str:
    """The database in effect: argument, `configure()`, `LOOM_DATABASE`, then ./loom.db."""
    if database is not None:
        return os.fspath(database)
    return _configured or os.environ.get("LOOM_DATABASE") or DEFAULT_DATABASE


def client_limits() -> Limits:
    """The limits starts and signals of this process obey: `configure(limits=)`, else env."""
    return _configured_limits or Limits.from_env()


def _resolve(database: str | None) -> str:
    url = database_url(database)
    if "://" in url:
        return url
    return str(Path(url).expanduser().resolve())


_resolved: dict[tuple[str | None, str | None, str | None], str] = {}


def get_store(database: str | os.PathLike[str] | None = None) -> Store:
    """The process-wide store for `database`: SQLite (one writer connection per process) or
    PostgreSQL (a connection pool that workers size from their concurrency)."""
    given = None if database is None else os.fspath(database)
    lookup = (given, _configured, os.environ.get("LOOM_DATABASE"))
    key = _resolved.get(lookup)
    if key is None:
        key = _resolved[lookup] = _resolve(given)
    with _lock:
        store = _stores.get(key)
        if store is None:
            if key.startswith(("postgres://", "postgresql://")):
                from loom.postgres_store import PostgresStore

                store = PostgresStore(key)
            elif "://" in key:
                raise ValueError(
                    f"unsupported database URL {key!r}: use a SQLite file path or "
                    "postgresql://user@host:port/dbname"
                )
            else:
                from loom.sqlite_store import SQLiteStore

                store = SQLiteStore(key)
            _stores[key] = store
        return store


def discard_store(database: str | os.PathLike[str]) -> Store | None:
    """Forget the process-wide store of `database` and return it (closing it is the
    caller's): for a database that goes away, like a test environment's temporary one."""
    key = _resolve(os.fspath(database))
    with _lock:
        for lookup in [lookup for lookup, resolved in _resolved.items() if resolved == key]:
            del _resolved[lookup]
        return _stores.pop(key, None)


async def start_workflow(
    compiled: WorkflowDefinition[Any, StateT],
    input: Any,
    *,
    workflow_id: str | None = None,
    owner: str | None = None,
    database: str | None = None,
) -> WorkflowHandle[StateT]:
    encoded = compiled.encode_input(input)
    # Checked before the store is touched: an oversized input never reaches history.
    client_limits().check(f"input of workflow {compiled.name!r}", encoded, "max_input_bytes")
    store = get_store(database)
    workflow_id = workflow_id or str(uuid.uuid4())
    if not telemetry.is_enabled():
        record = await _create(store, compiled, encoded, workflow_id, owner)
        return WorkflowHandle(record.workflow_id, store, compiled)
    with telemetry.tracer().start_as_current_span(
        f"StartWorkflow:{compiled.name}",
        kind=SpanKind.PRODUCER,
        attributes={"loom.workflow.id": workflow_id, "loom.workflow.name": compiled.name},
    ):
        record = await _create(store, compiled, encoded, workflow_id, owner)
    return WorkflowHandle(record.workflow_id, store, compiled)


async def _create(
    store: Store,
    compiled: WorkflowDefinition[Any, Any],
    encoded: JSON,
    workflow_id: str,
    owner: str | None,
) -> WorkflowRecord:
    spec = NewWorkflow(
        workflow_id=workflow_id,
        workflow_name=compiled.name,
        workflow_version=compiled.version,
        input=encoded,
        state=compiled.initial_state(),
        source_hash=compiled.source_hash,
        total_steps=len(compiled.steps),
        seed=random.getrandbits(63),
        owner=owner,
        agent=compiled.agent,
        trace=telemetry.current_carrier(),
    )
    # A worker of this process serving it runs the first activation before the create
    # commits (one commit instead of three: see Worker.start).
    starter = store.wakeups.starter_for(compiled.name)
    if starter is not None:
        record, _ = await starter.start(store, spec)
    else:
        record, _ = await store.create_workflow(spec)
    return record


class WorkflowHandle(Generic[StateT]):
    """A reference to a durable workflow: status, result, signals and cancellation."""

    def __init__(
        self,
        workflow_id: str,
        store: Store,
        compiled: WorkflowDefinition[Any, StateT] | None = None,
    ) -> None:
        self.workflow_id = workflow_id
        self._store = store
        self._compiled = compiled

    @property
    def id(self) -> str:
        return self.workflow_id

    def __repr__(self) -> str:
        return f"WorkflowHandle({self.workflow_id!r})"

    async def _record(self) -> WorkflowRecord:
        record = await self._store.get_workflow(self.workflow_id)
        if record is None:
            raise WorkflowNotFoundError(self.workflow_id)
        return record

    async def status(self) -> WorkflowStatus:
        """Current status (PENDING, RUNNING, SUSPENDED, COMPLETED, FAILED, CANCELED)."""
        return (await self._record()).status

    async def info(self) -> dict[str, JSON]:
        """What is known of the workflow now, as one dict (loom-core's `handle.info()`).

        Keys: `workflow_id`, `workflow_name`, `workflow_version`, `status` (a
        WorkflowStatus, which is a str), `input`, `state`, `error`, `owner`, `agent`,
        `parent_id`, `current_step`, `step_description`, `step_index`, `total_steps`,
        `created_at`, `updated_at` (unix ms).
        """
        record = await self._record()
        data = {name: getattr(record, name) for name in _INFO_FIELDS}
        data["status"] = record.status
        return data

    async def state(self) -> dict[str, JSON]:
        """The latest committed state as JSON (also while running)."""
        return (await self._record()).state

    async def result(self, timeout: float | None = None) -> StateT:
        """Wait for the workflow to finish and return its typed final State.

        A SUSPENDED workflow is not finished: this keeps waiting through it (until a
        `resume()` lets it finish, or `timeout`).
        Raises the workflow's error (ActivityFailedError, WorkflowExecutionError,
        NonDeterministicWorkflowError, WorkflowCancelledError) or WorkflowStillRunningError
        when `timeout` seconds pass first.
        """
        try:
            outcome = await _watcher(self._store).wait(self.workflow_id, timeout)
        except TimeoutError:
            outcome = None
        if outcome is not None:
            return self._finish(outcome.status, outcome.state, outcome.error, "")
        record = await self._record()
        if not record.status.is_closed:
            raise WorkflowStillRunningError(self.workflow_id, record.status.value)
        return self._outcome(record)

    def _outcome(self, record: WorkflowRecord) -> StateT:
        return self._finish(record.status, record.state, record.error, record.workflow_name)

    def _finish(
        self,
        status: WorkflowStatus,
        state: dict[str, JSON],
        error: dict[str, JSON] | None,
        workflow_name: str,
    ) -> StateT:
        if status is WorkflowStatus.COMPLETED:
            compiled = self._compiled or (_known(workflow_name) if workflow_name else None)
            if compiled is None:
                return state  # type: ignore[return-value]  # untyped reattach: plain JSON
            return compiled.decode_state(state)
        raise decode_error(error or {"type": status.value}, self.workflow_id)

    async def signal(self, name: str, payload: JSON = None, **fields: JSON) -> None:
        """Send signal `name`; buffered if the workflow is not waiting for it yet.

        Raises PayloadTooLargeError, before anything is written, when the payload is over
        `Limits.max_signal_bytes`.
        """
        if fields:
            if payload is not None and not isinstance(payload, Mapping):
                raise TypeError("signal(): keyword fields combine only with a dict payload")
            payload = {**(payload or {}), **fields}
        if not is_json(payload):
            raise TypeError(f"signal {name!r}: payload must be JSON-serialisable, got {payload!r}")
        client_limits().check(f"payload of signal {name!r}", payload, "max_signal_bytes")
        await self._store.signal_workflow(self.workflow_id, name, payload)

    async def cancel(self, reason: str | None = None) -> None:
        """Request cancellation; the workflow sees WorkflowCancelledError at its next await.

        The reason is error text in history: it is cut to `Limits.max_error_chars`.
        """
        if reason is not None:
            reason = clip(reason, client_limits().max_error_chars)
        if not await self._store.cancel_workflow(self.workflow_id, reason):
            await self._record()  # raises WorkflowNotFoundError for unknown ids

    async def suspend(self, reason: str | None = None) -> bool:
        """Park the workflow: none of its code runs until `resume()`.

        Signals and timers that arrive meanwhile are kept and acted on after the resume;
        an activity already running finishes and its result is kept. Returns False when it
        was suspended already. Raises WorkflowClosedError when it has finished.
        """
        message = "suspended by an operator" + (f": {reason}" if reason else "")
        error: dict[str, JSON] = {
            "type": OPERATOR_SUSPENSION,
            "message": clip(message, client_limits().max_error_chars),
            "details": {"reason": reason},
        }
        return await self._store.suspend_workflow(self.workflow_id, error)

    async def resume(self) -> bool:
        """Run a SUSPENDED workflow again with the code the workers run now.

        Its whole history is replayed; if it is still broken it suspends again, with the
        new error. Returns False when it was not suspended (nothing to do).
        """
        return await self._store.resume_workflow(self.workflow_id)

    async def fork(
        self, at: int | None = None, workflow_id: str | None = None
    ) -> WorkflowHandle[StateT]:
        """Start a new workflow whose history is a copy of this one's before sequence `at`
        (default: before its first failure), so completed activities do not run again; it
        continues with current code. `workflow_id` defaults to `<id>-fork-<8 hex>`.
        """
        new_id = workflow_id or f"{self.workflow_id}-fork-{uuid.uuid4().hex[:8]}"
        record = await self._store.fork_workflow(self.workflow_id, new_id, at)
        return WorkflowHandle(record.workflow_id, self._store, self._compiled)


_INFO_FIELDS = (
    "workflow_id",
    "workflow_name",
    "workflow_version",
    "status",
    "input",
    "state",
    "error",
    "owner",
    "agent",
    "parent_id",
    "current_step",
    "step_description",
    "step_index",
    "total_steps",
    "created_at",
    "updated_at",
)
"""What `info()` shows of a record: not the engine's bookkeeping (sequences, epoch)."""


class _ClosedWatcher:
    """Waits for workflows to finish: woken at once in-process, and across processes by one
    poll for all waiters together: the closes since the last one seen where the store
    numbers them (O(closed since), nothing read while nothing changed), else the statuses
    of all waiters in one query."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._waiting: dict[str, list[asyncio.Future[Outcome | None]]] = {}
        self._poller: asyncio.Task[None] | None = None
        self._mark: int | None = None
        self._version: int | None = None
        self._marking: asyncio.Task[None] | None = None

    async def wait(self, workflow_id: str, timeout: float | None) -> Outcome | None:
        """The outcome the closing commit pushed, None when it closed without one (or had
        closed already: read the record), or TimeoutError after `timeout` seconds."""
        future = self._store.wakeups.closed_future(workflow_id)
        self._waiting.setdefault(workflow_id, []).append(future)
        try:
            # Registered, then the mark, then the status: a close after the status read has
            # a number above the mark, or wakes the future in-process.
            if self._store.is_numbering_closes and self._mark is None:
                if self._marking is None or self._marking.done():
                    self._marking = asyncio.get_running_loop().create_task(self._read_mark())
                await asyncio.shield(self._marking)
            status = (await self._store.get_statuses([workflow_id])).get(workflow_id)
            if status is None:
                raise WorkflowNotFoundError(workflow_id)
            if status.is_closed:
                return None
            if self._poller is None or self._poller.done():
                self._poller = asyncio.get_running_loop().create_task(self._poll())
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        finally:
            self._store.wakeups.forget(workflow_id, future)
            waiters = self._waiting.get(workflow_id, [])
            if future in waiters:
                waiters.remove(future)
            if not waiters:
                self._waiting.pop(workflow_id, None)

    async def _read_mark(self) -> None:
        scan = await self._store.closed_since(None, None, 0)
        self._mark, self._version = scan.mark, scan.version

    async def _poll(self) -> None:
        try:
            if self._store.is_numbering_closes:
                await self._poll_closes()
            else:
                await self._poll_statuses()
        finally:
            # Nobody waits: the next waiter reads a fresh mark rather than every close since,
            # into a fresh dict (one never shrinks as keys leave: a burst's megabytes).
            if not self._waiting:
                self._mark = self._version = None
                self._waiting = {}

    async def _poll_closes(self) -> None:
        loop = asyncio.get_running_loop()
        interval, statuses_due = POLL_INTERVAL, loop.time() + UNNUMBERED_POLL_INTERVAL
        while self._waiting:
            await asyncio.sleep(interval)
            scan = await self._store.closed_since(self._mark, self._version, CLOSE_SCAN_LIMIT)
            self._mark, self._version = scan.mark, scan.version
            self._wake(scan.workflow_ids)
            interval = POLL_INTERVAL if scan.is_complete else 0
            if loop.time() >= statuses_due and self._waiting:
                await self._wake_closed(list(self._waiting))
                statuses_due = loop.time() + UNNUMBERED_POLL_INTERVAL

    async def _poll_statuses(self) -> None:
        interval = POLL_INTERVAL
        while self._waiting:
            if self._store.is_pushing_closes:
                interval = PUSHED_POLL_INTERVAL
            await asyncio.sleep(interval)
            ids = list(self._waiting)
            if not ids:
                break
            found = await self._wake_closed(ids)
            # Closes only polling found come from elsewhere: keep looking often then.
            interval = POLL_INTERVAL if found else min(interval * 2, MAX_POLL_INTERVAL)

    async def _wake_closed(self, workflow_ids: list[str]) -> bool:
        """Read the statuses of `workflow_ids` and wake the waiters of the closed ones."""
        statuses = await self._store.get_statuses(workflow_ids)
        return self._wake([i for i, status in statuses.items() if status.is_closed])

    def _wake(self, closed: list[str]) -> bool:
        """Wake the waiters of `closed` (they read the record); whether there were any."""
        found = False
        for workflow_id in closed:
            for future in self._waiting.pop(workflow_id, []):
                found = True
                if not future.done():
                    future.set_result(None)
        return found


_watchers: dict[tuple[int, asyncio.AbstractEventLoop], _ClosedWatcher] = {}


def _watcher(store: Store) -> _ClosedWatcher:
    loop = asyncio.get_running_loop()
    for key in [k for k in _watchers if k[1].is_closed()]:
        del _watchers[key]
    key = (id(store), loop)
    watcher = _watchers.get(key)
    if watcher is None:
        watcher = _watchers[key] = _ClosedWatcher(store)
    return watcher


def _known(name: str) -> WorkflowDefinition[Any, Any] | None:
    try:
        return compiled_workflow(name)
    except LookupError:
        return None


def get_handle(
    workflow_id: str,
    workflow: type[Any] | WorkflowDefinition[Any, StateT] | None = None,
    *,
    database: str | None = None,
) -> WorkflowHandle[Any]:
    """Reattach to a workflow by id; pass its class to get a typed `result()`."""
    compiled = workflow.compile() if isinstance(workflow, type) else workflow
    return WorkflowHandle(workflow_id, get_store(database), compiled)
