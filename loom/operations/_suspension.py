"""Operator suspension, resume and fork of a workflow."""

from __future__ import annotations

from collections.abc import Sequence

from loom._json import JSON, dumps
from loom.activation import ACTIVITY_TASK, TIMER_TASK
from loom.dialect import Connection, Rollback
from loom.exceptions import WorkflowClosedError, WorkflowNotFoundError
from loom.history import (
    CLOSING_KINDS,
    OPERATOR_SUSPENSION,
    Event,
    EventKind,
    NewEvent,
    WorkflowStatus,
)
from loom.operations._reads import get_workflow, load_events
from loom.operations._workflows import _append_events, _ensure_workflow_task
from loom.store import ClaimedTask, WorkflowRecord


async def _lock_status(conn: Connection, workflow_id: str) -> WorkflowStatus:
    status = await conn.fetchval(
        f"SELECT status FROM workflows WHERE workflow_id = $1{conn.dialect.for_update}",
        workflow_id,
    )
    if status is None:
        raise WorkflowNotFoundError(workflow_id)
    return WorkflowStatus(status)


async def suspend_workflow(
    conn: Connection,
    workflow_id: str,
    error: dict[str, JSON],
    task: ClaimedTask | None,
    now: int,
) -> bool:
    """Park a workflow: SUSPENDED with `error` kept, a WORKFLOW_SUSPENDED event, epoch bumped.

    The epoch bump refuses any activation computed before (a task in flight when an operator
    suspends). A worker suspending from `task` releases it in the same transaction, under its
    lease, and leaves it (and every other task) in place for the resume. False when it was
    already suspended (or, for a worker, the lease was lost: nothing is written then).
    """
    status = await _lock_status(conn, workflow_id)
    if status.is_closed:
        if task is not None:
            raise Rollback(False)
        raise WorkflowClosedError(workflow_id, status.value, "be suspended")
    if task is not None:
        released = await conn.execute(
            "UPDATE tasks SET lease_owner = NULL, lease_expires_at = NULL, run_at = $1 "
            "WHERE task_id = $2 AND lease_owner = $3 AND attempts = $4",
            now,
            task.task_id,
            task.owner,
            task.attempt,
        )
        if not released:
            raise Rollback(False)
    if status is WorkflowStatus.SUSPENDED:
        return False
    await _append_events(conn, workflow_id, [NewEvent(EventKind.WORKFLOW_SUSPENDED, error)], now)
    await conn.execute(
        "UPDATE workflows SET status = 'SUSPENDED', error = $1, epoch = epoch + 1 "
        "WHERE workflow_id = $2",
        dumps(error),
        workflow_id,
    )
    return True


async def resume_workflow(conn: Connection, workflow_id: str, now: int) -> bool:
    """Run a SUSPENDED workflow again with whatever code the workers have now.

    A fresh epoch makes every worker replay its whole history; crash streaks start over.
    False (nothing written) when it was not suspended.
    """
    status = await _lock_status(conn, workflow_id)
    if status.is_closed:
        raise WorkflowClosedError(workflow_id, status.value, "be resumed")
    if status is not WorkflowStatus.SUSPENDED:
        return False
    await _append_events(conn, workflow_id, [NewEvent(EventKind.WORKFLOW_RESUMED, {})], now)
    await conn.execute(
        "UPDATE workflows SET status = 'RUNNING', error = NULL, epoch = epoch + 1 "
        "WHERE workflow_id = $1",
        workflow_id,
    )
    await conn.execute("UPDATE tasks SET recoveries = 0 WHERE workflow_id = $1", workflow_id)
    await _ensure_workflow_task(conn, workflow_id, now)
    await conn.notify_tasks()
    return True


FAILURE_KINDS = (
    EventKind.ACTIVITY_FAILED,
    EventKind.CHILD_FAILED,
    EventKind.WORKFLOW_SUSPENDED,
    EventKind.WORKFLOW_FAILED,
    EventKind.WORKFLOW_CANCELED,
)
"""What `fork` cuts before by default: the first of these in the history."""
_NOT_COPIED = frozenset(
    {
        *CLOSING_KINDS,
        EventKind.CANCEL_REQUESTED,
        EventKind.WORKFLOW_SUSPENDED,
        EventKind.WORKFLOW_RESUMED,
    }
)


def _is_failure(event: Event) -> bool:
    """An operator's suspension is no failure: the code had not gone wrong there."""
    if event.kind is EventKind.WORKFLOW_SUSPENDED:
        return event.payload.get("type") != OPERATOR_SUSPENSION
    return event.kind in FAILURE_KINDS


def fork_history(
    events: Sequence[Event], at: int | None
) -> tuple[list[NewEvent], list[tuple[str, str, dict[str, JSON], int]]]:
    """The events a fork copies (before `at`, default the first failure) and the tasks its
    open commands need: (events, [(key suffix, kind, payload, run_at)]).

    An activity scheduled but without a result gets a fresh task (it runs again, as of
    now); a timer its task at the recorded time. A child without a result cannot be
    shared by two parents, so the copy ends before it and the fork starts its own.
    """
    if at is None:
        at = next((e.sequence for e in events if _is_failure(e)), len(events) + 1)
    copied = [e for e in events if e.sequence < at and e.kind not in _NOT_COPIED]
    while True:
        results = {
            int(e.payload["seq"])
            for e in copied
            if e.kind
            in (
                EventKind.ACTIVITY_COMPLETED,
                EventKind.ACTIVITY_FAILED,
                EventKind.TIMER_FIRED,
                EventKind.CHILD_COMPLETED,
                EventKind.CHILD_FAILED,
            )
        }
        child = next(
            (
                i
                for i, e in enumerate(copied)
                if e.kind is EventKind.CHILD_STARTED and int(e.payload["seq"]) not in results
            ),
            None,
        )
        if child is None:
            break
        copied = copied[:child]
    tasks: list[tuple[str, str, dict[str, JSON], int]] = []
    for e in copied:
        seq = int(e.payload.get("seq", 0) or 0)
        if seq in results:
            continue
        if e.kind is EventKind.ACTIVITY_SCHEDULED:
            payload = {"seq": seq, "name": e.payload["name"], "input": e.payload["input"]}
            tasks.append((f"a:{{id}}:{seq}", ACTIVITY_TASK, payload, 0))
        elif e.kind is EventKind.TIMER_STARTED or (
            e.kind is EventKind.SIGNAL_WAIT_STARTED and "fire_at" in e.payload
        ):
            tasks.append((f"t:{{id}}:{seq}", TIMER_TASK, {"seq": seq}, int(e.payload["fire_at"])))
    return [NewEvent(e.kind, e.payload) for e in copied], tasks


async def fork_workflow(
    conn: Connection, workflow_id: str, new_id: str, at: int | None, now: int
) -> WorkflowRecord:
    """A new workflow whose history is a copy of `workflow_id`'s before `at` (see
    `fork_history`); it continues with current code from where the copy ends."""
    source = await get_workflow(conn, workflow_id)
    if source is None:
        raise WorkflowNotFoundError(workflow_id)
    if at is not None and not 2 <= at <= source.last_sequence + 1:
        raise ValueError(
            f"fork at sequence {at}: workflow {workflow_id!r} has events 1..{source.last_sequence}"
            f"; give a sequence from 2 (copy only its start) to {source.last_sequence + 1} (all)"
        )
    existing = await conn.fetchval("SELECT 1 FROM workflows WHERE workflow_id = $1", new_id)
    if existing is not None:
        raise ValueError(f"workflow id {new_id!r} is taken; fork with another id (--id)")
    events, tasks = fork_history(await load_events(conn, workflow_id, 0), at)
    started = dict(events[0].payload)
    started["forked_from"] = {"workflow_id": workflow_id, "before_sequence": at}
    events[0] = NewEvent(EventKind.WORKFLOW_STARTED, started)
    source_hash = await conn.fetchval(
        "SELECT source_hash FROM workflows WHERE workflow_id = $1", workflow_id
    )
    await conn.execute(
        "INSERT INTO workflows (workflow_id, workflow_name, workflow_version, status, input, "
        "state, owner, agent, source_hash, total_steps, last_sequence, created_at, updated_at) "
        "VALUES ($1, $2, $3, 'RUNNING', $4, $5, $6, $7, $8, $9, 0, $10, $10)",
        new_id,
        source.workflow_name,
        source.workflow_version,
        dumps(source.input),
        dumps(source.state),
        source.owner,
        source.agent,
        source_hash,
        source.total_steps,
        now,
    )
    await _append_events(conn, new_id, events, now)
    for key, kind, payload, run_at in tasks:
        await conn.execute(
            "INSERT INTO tasks (task_key, workflow_id, kind, payload, run_at) "
            "VALUES ($1, $2, $3, $4, $5)",
            key.replace("{id}", new_id),
            new_id,
            kind,
            dumps({"workflow_id": new_id, **payload} if kind == ACTIVITY_TASK else payload),
            run_at or now,
        )
    await _ensure_workflow_task(conn, new_id, now)
    await conn.notify_tasks()
    record = await get_workflow(conn, new_id)
    assert record is not None  # inserted above, in this transaction
    return record
