"""SQLite store: the embedded default backend.

One writer thread per database with group commit (`_writer`), and the operations it runs
(`_operations`); lease fencing happens inside each operation's transaction.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from loom._json import JSON
from loom.clock import StoreClock
from loom.exceptions import WorkflowClosedError
from loom.history import Event, EventKind, NewEvent, WorkflowStatus
from loom.replay import Activation
from loom.sqlite_store._operations import (
    _WORKFLOW_COLUMNS,
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
    _record,
    _release_tasks,
    _retry_activity,
)
from loom.sqlite_store._writer import MIGRATIONS, T, _Writer, connect, migrate
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

__all__ = ["MIGRATIONS", "SQLiteStore", "connect", "migrate"]
# Shared with the PostgreSQL store: the row layout of `workflows` and its decoding.
__all__ += ["_WORKFLOW_COLUMNS", "_record"]


class SQLiteStore(Store):
    """The embedded default store (one file, WAL); see module docstring."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self.wakeups = Wakeups()
        self._writer = _Writer(self.path)
        self.clock = StoreClock(*self._writer.clock_anchor)
        self._closed = False

    async def _write(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._writer.submit(fn, args, True)

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._writer.submit(fn, args, False)

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await asyncio.get_running_loop().run_in_executor(None, self._writer.stop)

    def close_sync(self) -> None:
        if not self._closed:
            self._closed = True
            self._writer.stop()

    # -- operations -------------------------------------------------------------------

    async def create_workflow(self, spec: NewWorkflow) -> tuple[WorkflowRecord, bool]:
        result = await self._write(_create_workflow, spec, self.clock.now_ms())
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
        return await self._write(
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
        await self._write(_extend_leases, owner, lease_ms, self.clock.now_ms())

    async def release_tasks(self, owner: str) -> None:
        await self._write(_release_tasks, owner, self.clock.now_ms())

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
