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
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

from loom._json import JSON
from loom.clock import StoreClock
from loom.exceptions import WorkflowClosedError
from loom.history import Event, EventKind, NewEvent, WorkflowStatus
from loom.postgres_store._database import (
    CHANNEL,
    DEFAULT_POOL_SIZE,
    MAX_POOL_SIZE,
    MIGRATIONS,
    _Database,
    is_postgres_url,
    migrate,
)
from loom.postgres_store._operations import (
    _append_external,
    _claim_tasks,
    _collect_stats,
    _commit_workflow_task,
    _complete_and_continue,
    _complete_task,
    _count_tasks,
    _create_workflow,
    _diagnose,
    _extend_leases,
    _get_statuses,
    _get_workflow,
    _get_workflows,
    _list_logs,
    _list_workflows,
    _load_events,
    _release_tasks,
    _retry_activity,
)
from loom.replay import Activation
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
    Wakeups,
    WorkflowRecord,
)

__all__ = ["CHANNEL", "MIGRATIONS", "PostgresStore", "is_postgres_url", "migrate"]

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

    def closing_tasks_ready(self, workflow_id: str) -> None:
        self.notify(workflow_id)  # handles waiting in other processes
        # In-process only: a close that wakes a parent or children notifies inside its own
        # transaction (_close_workflow); most closes create nothing runnable, and a NOTIFY
        # per close would send every other worker process claiming for nothing.
        self.local_tasks_ready()

    def remote_tasks_ready(self) -> None:  # another process sent NOTIFY
        super().tasks_ready()


class PostgresStore(Store):
    """The scale-out store: many worker processes on many hosts share one PostgreSQL."""

    wakeups: _Wakeups

    def __init__(self, url: str) -> None:
        self.url = url
        self.wakeups = wakeups = _Wakeups()
        self.clock = StoreClock.local()
        self._db = _Database(
            url, wakeups.remote_tasks_ready, wakeups.workflow_closed, clock=self.clock
        )
        wakeups.notify = self._db.notify
        self._closed = False

    async def _write(self, fn: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
        result: T = await self._db.submit(fn, args, True)
        return result

    async def _read(self, fn: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
        """Reads, and writes that are one statement (atomic by themselves): no explicit
        transaction, so no BEGIN and COMMIT round trips."""
        result: T = await self._db.submit(fn, args, False)
        return result

    @property
    def pool_size(self) -> int:
        """The connection pool's maximum size (grown by `reserve`)."""
        return self._db.pool_size

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
        result = await self._read(_create_workflow, spec, self.clock.now_ms())
        if result[1]:
            self.wakeups.tasks_ready()
            self.wakeups.progress_changed()
        return result

    async def claim_tasks(
        self,
        owner: str,
        limit: int,
        lease_ms: int,
        cursor_of: CursorLookup,
        *,
        avoid: Sequence[str] = (),
    ) -> list[ClaimedTask]:
        # The claim commits by itself; what follows only reads (and drops finished tasks).
        return await self._read(
            _claim_tasks, owner, limit, lease_ms, cursor_of, self.clock.now_ms(), tuple(avoid)
        )

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
            _commit_workflow_task,
            task,
            activation,
            seen_sequence,
            step,
            eager_lease_ms,
            self.clock.now_ms(),
        )
        if result.is_committed:
            self.wakeups.activation_committed(task.workflow_id, activation, result)
        return result

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
        if done.is_committed:
            self.wakeups.activation_committed(task.workflow_id, activation, done)
        else:
            self.wakeups.tasks_ready()  # the result went in alone: its workflow task is due
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
        done = await self._write(
            _complete_task, task, event, continue_with, lease_ms, self.clock.now_ms()
        )
        if done.is_recorded and done.next_task is None:
            self.wakeups.tasks_ready()
        return done

    async def retry_activity(
        self, task: ClaimedTask, run_at: int, payload: dict[str, JSON], error: str
    ) -> bool:
        ok = await self._write(_retry_activity, task, run_at, payload, error, self.clock.now_ms())
        if ok:
            self.wakeups.tasks_ready()
        return ok

    async def fire_timer(
        self, task: ClaimedTask, *, continue_with: CursorLookup | None = None, lease_ms: int = 0
    ) -> Completion:
        event = NewEvent(EventKind.TIMER_FIRED, {"seq": task.payload["seq"]})
        done = await self._write(
            _complete_task, task, event, continue_with, lease_ms, self.clock.now_ms()
        )
        if done.is_recorded and done.next_task is None:
            self.wakeups.tasks_ready()
        return done

    async def signal_workflow(self, workflow_id: str, name: str, payload: JSON) -> None:
        event = NewEvent(EventKind.SIGNAL_RECEIVED, {"name": name, "payload": payload})
        await self._write(
            _append_external, workflow_id, event, "receive signals", self.clock.now_ms()
        )
        self.wakeups.tasks_ready()

    async def cancel_workflow(self, workflow_id: str, reason: str | None) -> bool:
        event = NewEvent(EventKind.CANCEL_REQUESTED, {"reason": reason})
        try:
            await self._write(
                _append_external, workflow_id, event, "be cancelled", self.clock.now_ms()
            )
        except WorkflowClosedError:
            return False
        self.wakeups.tasks_ready()
        return True

    async def extend_leases(self, owner: str, lease_ms: int) -> None:
        await self._read(_extend_leases, owner, lease_ms, self.clock.now_ms())

    async def release_tasks(self, owner: str) -> None:
        await self._read(_release_tasks, owner, self.clock.now_ms())
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
        return await self._read(_count_tasks, self.clock.now_ms())

    async def collect_stats(self) -> StoreStats:
        return await self._read(_collect_stats, self.clock.now_ms())

    async def diagnose(self) -> Diagnosis:
        return await self._read(_diagnose, self.clock.now_ms())
