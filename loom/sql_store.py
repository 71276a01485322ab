"""The `Store` both SQL backends share: each method is one operation of `loom.operations`,
run by the backend in the `Mode` it needs, followed by the in-process wake-ups it causes.

A backend supplies only how an operation reaches its database (`_run`): SQLite's writer
thread with group commit, or PostgreSQL's pool on its DB thread.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

from loom import operations as ops
from loom._json import JSON
from loom.activation import Activation
from loom.breaker import Breaker, BreakerCall, BreakerResult
from loom.clock import StoreClock
from loom.cron import Schedule
from loom.dialect import Connection, Mode
from loom.exceptions import WorkflowClosedError
from loom.history import Event, EventKind, NewEvent, WorkflowStatus
from loom.store import (
    Admission,
    ClaimedTask,
    CloseScan,
    CommitResult,
    Completion,
    CursorLookup,
    DefinitionRecord,
    Diagnosis,
    NewWorkflow,
    StepProgress,
    Store,
    StoreStats,
    Wakeups,
    WorkflowRecord,
)

T = TypeVar("T")
Operation = Callable[..., Coroutine[Any, Any, T]]
"""`op(conn, *args)`: one function of `loom.operations`."""
Outcome = tuple[bool, Any]
"""What a DB thread hands back for one operation: (True, result) or (False, the error)."""


def hand_over(futures: Sequence[asyncio.Future[Any]], outcomes: Sequence[Outcome]) -> None:
    """From a backend's DB thread, resolve each future on its own loop: one wake-up per
    loop however many futures (a wake-up is a self-pipe write and a turn of that loop)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Outcome]]] = {}
    for future, outcome in zip(futures, outcomes, strict=True):
        by_loop.setdefault(future.get_loop(), []).append((future, outcome))
    for loop, items in by_loop.items():
        if not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # closed meanwhile
                loop.call_soon_threadsafe(_deliver, items)


def _deliver(items: list[tuple[asyncio.Future[Any], Outcome]]) -> None:
    for future, (ok, value) in items:
        if future.cancelled():
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


class SQLStore(Store):
    """Store methods over `loom.operations`; subclasses provide `_run`."""

    wakeups: Wakeups
    clock: StoreClock
    _closed = False

    @abc.abstractmethod
    async def _run(self, mode: Mode, op: Operation[T], *args: Any) -> T:
        """Run `op(conn, *args)` on a connection of this database, as `mode` requires."""

    @abc.abstractmethod
    def _stop(self) -> None:
        """Stop the backend's DB thread (blocking; waits for operations in flight)."""

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await asyncio.get_running_loop().run_in_executor(None, self._stop)

    def close_sync(self) -> None:
        if not self._closed:
            self._closed = True
            self._stop()

    async def create_workflow(self, spec: NewWorkflow) -> tuple[WorkflowRecord, bool]:
        result = await self._run(Mode.STATEMENTS, ops.create_workflow, spec, self.now_ms())
        if result[1]:
            self.wakeups.tasks_ready()
            self.wakeups.progress_changed()
        return result

    async def create_and_commit(
        self,
        spec: NewWorkflow,
        owner: str,
        lease_ms: int,
        activation: Activation,
        seen_sequence: int,
        step: StepProgress | None,
        *,
        now: int,
        eager_lease_ms: int = 0,
    ) -> tuple[WorkflowRecord, bool, CommitResult | None]:
        record, created, result = await self._run(
            Mode.TRANSACTION,
            ops.create_and_commit,
            spec,
            owner,
            lease_ms,
            activation,
            seen_sequence,
            step,
            eager_lease_ms,
            now,
        )
        if created:
            self.wakeups.progress_changed()
        if result is not None and result.is_committed:
            self.wakeups.activation_committed(spec.workflow_id, activation, result)
        return record, created, result

    async def claim_tasks(
        self,
        owner: str,
        limit: int,
        lease_ms: int,
        cursor_of: CursorLookup,
        *,
        avoid: Sequence[str] = (),
    ) -> list[ClaimedTask]:
        # The claim is one statement; what follows only reads (and drops finished tasks).
        return await self._run(
            Mode.STATEMENTS,
            ops.claim_tasks,
            owner,
            limit,
            lease_ms,
            cursor_of,
            self.now_ms(),
            tuple(avoid),
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
        result = await self._run(
            Mode.TRANSACTION,
            ops.commit_workflow_task,
            task,
            activation,
            seen_sequence,
            step,
            eager_lease_ms,
            self.now_ms(),
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
        breaker: BreakerResult | None = None,
    ) -> CommitResult:
        done = await self._run(
            Mode.TRANSACTION,
            ops.complete_and_continue,
            task,
            result,
            expected,
            activation,
            step,
            eager_lease_ms,
            at,
            breaker,
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
        breaker: BreakerResult | None = None,
    ) -> Completion:
        return await self._complete(task, NewEvent(kind, payload), continue_with, lease_ms, breaker)

    async def fire_timer(
        self, task: ClaimedTask, *, continue_with: CursorLookup | None = None, lease_ms: int = 0
    ) -> Completion:
        event = NewEvent(EventKind.TIMER_FIRED, {"seq": task.payload["seq"]})
        return await self._complete(task, event, continue_with, lease_ms)

    async def _complete(
        self,
        task: ClaimedTask,
        event: NewEvent,
        continue_with: CursorLookup | None,
        lease_ms: int,
        breaker: BreakerResult | None = None,
    ) -> Completion:
        done = await self._run(
            Mode.TRANSACTION,
            ops.complete_task,
            task,
            event,
            continue_with,
            lease_ms,
            self.now_ms(),
            breaker,
        )
        if done.is_recorded and done.next_task is None:
            self.wakeups.tasks_ready()
        return done

    async def retry_activity(
        self,
        task: ClaimedTask,
        run_at: int,
        payload: dict[str, JSON],
        error: str,
        *,
        breaker: BreakerResult | None = None,
    ) -> bool:
        ok = await self._run(
            Mode.TRANSACTION,
            ops.retry_activity,
            task,
            run_at,
            payload,
            error,
            self.now_ms(),
            breaker,
        )
        if ok:
            self.wakeups.tasks_ready()
        return ok

    async def admit_attempt(self, task: ClaimedTask, call: BreakerCall) -> Admission:
        # A read first: a closed breaker admits without a write transaction. One that opens
        # meanwhile lets this attempt through, like an attempt already running when it opened.
        if await self._run(Mode.READ, ops.is_breaker_closed, call.activity_name):
            return Admission(is_admitted=True)
        return await self._run(Mode.TRANSACTION, ops.admit_attempt, task, call, self.now_ms())

    async def list_breakers(self) -> list[Breaker]:
        return await self._run(Mode.READ, ops.list_breakers)

    async def reset_breaker(self, activity_name: str) -> bool:
        reset = await self._run(Mode.TRANSACTION, ops.reset_breaker, activity_name, self.now_ms())
        if reset:
            self.wakeups.tasks_ready()
        return reset

    async def put_schedule(self, schedule: Schedule) -> Schedule:
        return await self._run(Mode.TRANSACTION, ops.put_schedule, schedule, self.now_ms())

    async def get_schedule(self, name: str) -> Schedule | None:
        return await self._run(Mode.READ, ops.get_schedule, name)

    async def list_schedules(self) -> list[Schedule]:
        return await self._run(Mode.READ, ops.list_schedules)

    async def set_schedule_paused(
        self, name: str, is_paused: bool, next_fire_at: int | None = None
    ) -> Schedule:
        return await self._run(
            Mode.TRANSACTION,
            ops.set_schedule_paused,
            name,
            is_paused,
            next_fire_at,
            self.now_ms(),
        )

    async def delete_schedule(self, name: str) -> None:
        await self._run(Mode.TRANSACTION, ops.delete_schedule, name)

    async def due_schedules(self, workflow_names: Sequence[str], limit: int) -> list[Schedule]:
        return await self._run(
            Mode.READ, ops.due_schedules, list(workflow_names), self.now_ms(), limit
        )

    async def fire_schedule(
        self,
        name: str,
        expected_next: int,
        next_fire_at: int,
        starts: Sequence[NewWorkflow],
        skipped: int,
    ) -> list[str]:
        started = await self._run(
            Mode.TRANSACTION,
            ops.fire_schedule,
            name,
            expected_next,
            next_fire_at,
            list(starts),
            skipped,
            self.now_ms(),
        )
        if started:
            self.wakeups.tasks_ready()
            self.wakeups.progress_changed()
        return started

    async def signal_workflow(self, workflow_id: str, name: str, payload: JSON) -> None:
        event = NewEvent(EventKind.SIGNAL_RECEIVED, {"name": name, "payload": payload})
        await self._append_external(workflow_id, event, "receive signals")

    async def cancel_workflow(self, workflow_id: str, reason: str | None) -> bool:
        event = NewEvent(EventKind.CANCEL_REQUESTED, {"reason": reason})
        try:
            closed = await self._append_external(workflow_id, event, "be cancelled")
        except WorkflowClosedError:
            return False
        if closed:  # a SUSPENDED workflow closed in that transaction: wake its waiters
            self.wakeups.workflow_closed(workflow_id)
            self.wakeups.progress_changed()
        return True

    async def _append_external(self, workflow_id: str, event: NewEvent, action: str) -> bool:
        closed = await self._run(
            Mode.TRANSACTION, ops.append_external, workflow_id, event, action, self.now_ms()
        )
        self.wakeups.tasks_ready()
        return closed

    async def suspend_workflow(
        self, workflow_id: str, error: dict[str, JSON], task: ClaimedTask | None = None
    ) -> bool:
        suspended = await self._run(
            Mode.TRANSACTION, ops.suspend_workflow, workflow_id, error, task, self.now_ms()
        )
        self.wakeups.progress_changed()
        return suspended

    async def resume_workflow(self, workflow_id: str) -> bool:
        resumed = await self._run(Mode.TRANSACTION, ops.resume_workflow, workflow_id, self.now_ms())
        if resumed:
            self.wakeups.tasks_ready()
            self.wakeups.progress_changed()
        return resumed

    async def fork_workflow(
        self, workflow_id: str, new_id: str, at: int | None = None
    ) -> WorkflowRecord:
        record = await self._run(
            Mode.TRANSACTION, ops.fork_workflow, workflow_id, new_id, at, self.now_ms()
        )
        self.wakeups.tasks_ready()
        self.wakeups.progress_changed()
        return record

    async def release_claims(self, tasks: Sequence[ClaimedTask]) -> None:
        await self._run(Mode.TRANSACTION, ops.release_claims, list(tasks), self.now_ms())
        self.wakeups.tasks_ready()

    async def deliver_message(self, spec: NewWorkflow, payload: dict[str, JSON]) -> bool:
        created = await self._run(
            Mode.TRANSACTION, ops.deliver_message, spec, payload, self.now_ms()
        )
        self.wakeups.tasks_ready()
        return created

    async def take_reply(self, reply_id: str) -> dict[str, JSON] | None:
        return await self._run(Mode.TRANSACTION, ops.take_reply, reply_id)

    async def list_actors(
        self, *, workflow_name: str | None = None, limit: int = 100
    ) -> list[WorkflowRecord]:
        return await self._run(Mode.READ, ops.list_actors, workflow_name, limit)

    async def extend_leases(self, owner: str, lease_ms: int) -> None:
        await self._run(Mode.STATEMENTS, ops.extend_leases, owner, lease_ms, self.now_ms())

    async def release_tasks(self, owner: str) -> None:
        await self._run(Mode.STATEMENTS, ops.release_tasks, owner, self.now_ms())
        self.wakeups.tasks_ready()

    async def get_workflow(self, workflow_id: str) -> WorkflowRecord | None:
        return await self._run(Mode.READ, ops.get_workflow, workflow_id)

    async def get_workflows(self, workflow_ids: Sequence[str]) -> list[WorkflowRecord]:
        return await self._run(Mode.READ, ops.get_workflows, list(workflow_ids))

    async def get_statuses(self, workflow_ids: Sequence[str]) -> dict[str, WorkflowStatus]:
        return await self._run(Mode.READ, ops.get_statuses, list(workflow_ids))

    async def closed_since(self, mark: int | None, version: int | None, limit: int) -> CloseScan:
        return await self._run(Mode.READ, ops.closed_since, mark, version, limit)

    async def list_events(self, workflow_id: str) -> list[Event]:
        return await self._run(Mode.READ, ops.load_events, workflow_id, 0)

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
        return await self._run(Mode.READ, ops.list_workflows, wanted, name, owner, limit)

    async def list_logs(self, workflow_id: str) -> list[tuple[int, str, str]]:
        return await self._run(Mode.READ, ops.list_logs, workflow_id)

    async def egress_totals(self, activity: str) -> dict[str, dict[str, JSON]]:
        return await self._run(Mode.READ, ops.egress_totals, activity)

    async def count_tasks(self) -> dict[str, int]:
        return await self._run(Mode.READ, ops.count_tasks, self.now_ms())

    async def task_horizon(self) -> tuple[int, int | None]:
        return await self._run(Mode.READ, ops.task_horizon, self.now_ms())

    async def collect_stats(self) -> StoreStats:
        return await self._run(Mode.READ, ops.collect_stats, self.now_ms())

    async def diagnose(self) -> Diagnosis:
        return await self._run(Mode.READ, ops.diagnose, self.now_ms())

    async def register_definition(
        self, name: str, version: str, sha256: str, document: JSON
    ) -> bool:
        return await self._run(
            Mode.TRANSACTION,
            ops.register_definition,
            name,
            version,
            sha256,
            document,
            self.now_ms(),
        )

    async def list_definitions(self, name: str | None = None) -> list[DefinitionRecord]:
        return await self._run(Mode.READ, ops.list_definitions, name)

    async def get_definition(
        self, name: str, *, version: str | None = None, sha256_prefix: str | None = None
    ) -> DefinitionRecord | None:
        return await self._run(Mode.READ, ops.get_definition, name, version, sha256_prefix)

    async def llm_token_totals(self) -> dict[str, dict[str, int]]:
        return await self._run(Mode.READ, ops.llm_token_totals)


__all__ = ["Connection", "Mode", "Operation", "Outcome", "SQLStore", "hand_over"]
