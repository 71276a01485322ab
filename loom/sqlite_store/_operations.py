"""The SQLite store's operations: each is one function run on the writer thread inside the
batch's transaction. Fencing happens here: a task is held by (lease_owner, attempts).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from loom._json import JSON, dumps, loads
from loom.exceptions import (
    WorkflowAlreadyExistsError,
    WorkflowClosedError,
    WorkflowNotFoundError,
)
from loom.history import CLOSING_KINDS, COMMAND_KINDS, Event, EventKind, NewEvent, WorkflowStatus
from loom.replay import ACTIVITY_TASK, WORKFLOW_TASK, Activation, ChildStart, workflow_task_key
from loom.sqlite_store._writer import MIGRATIONS, SCHEMA_COMPONENT
from loom.store import (
    WAIT_KINDS,
    ClaimedTask,
    CommitResult,
    Completion,
    CursorLookup,
    Diagnosis,
    NewWorkflow,
    StepProgress,
    StoreStats,
    TaskWorkflow,
    WorkflowRecord,
    split_idle,
)

_WORKFLOW_COLUMNS = (
    "workflow_id, workflow_name, workflow_version, status, input, state, error, owner, agent, "
    "parent_id, current_step, step_description, step_index, total_steps, last_sequence, "
    "processed_sequence, epoch, created_at, updated_at"
)


def _record(row: sqlite3.Row | tuple[Any, ...]) -> WorkflowRecord:
    return WorkflowRecord(
        workflow_id=row[0],
        workflow_name=row[1],
        workflow_version=row[2],
        status=WorkflowStatus(row[3]),
        input=loads(row[4]),
        state=loads(row[5]),
        error=loads(row[6]) if row[6] else None,
        owner=row[7],
        agent=row[8],
        parent_id=row[9],
        current_step=row[10],
        step_description=row[11],
        step_index=row[12],
        total_steps=row[13],
        last_sequence=row[14],
        processed_sequence=row[15],
        epoch=row[16],
        created_at=row[17],
        updated_at=row[18],
    )


# -- operation bodies (run on the writer thread, inside a transaction) ------------------


def _get_workflow(conn: sqlite3.Connection, workflow_id: str) -> WorkflowRecord | None:
    row = conn.execute(
        f"SELECT {_WORKFLOW_COLUMNS} FROM workflows WHERE workflow_id = ?", (workflow_id,)
    ).fetchone()
    return _record(row) if row else None


def _get_workflows(conn: sqlite3.Connection, workflow_ids: list[str]) -> list[WorkflowRecord]:
    records: list[WorkflowRecord] = []
    for start in range(0, len(workflow_ids), 500):
        chunk = workflow_ids[start : start + 500]
        marks = ",".join("?" * len(chunk))
        rows = conn.execute(
            f"SELECT {_WORKFLOW_COLUMNS} FROM workflows WHERE workflow_id IN ({marks})", chunk
        ).fetchall()
        records.extend(_record(row) for row in rows)
    return records


def _get_statuses(conn: sqlite3.Connection, workflow_ids: list[str]) -> dict[str, WorkflowStatus]:
    statuses: dict[str, WorkflowStatus] = {}
    for start in range(0, len(workflow_ids), 500):
        chunk = workflow_ids[start : start + 500]
        marks = ",".join("?" * len(chunk))
        rows = conn.execute(
            f"SELECT workflow_id, status FROM workflows WHERE workflow_id IN ({marks})", chunk
        ).fetchall()
        statuses.update((row[0], WorkflowStatus(row[1])) for row in rows)
    return statuses


def _list_workflows(
    conn: sqlite3.Connection,
    statuses: list[WorkflowStatus],
    name: str | None,
    owner: str | None,
    limit: int,
) -> list[WorkflowRecord]:
    clauses: list[str] = []
    params: list[str] = []
    if statuses:
        clauses.append(f"status IN ({','.join('?' * len(statuses))})")
        params.extend(str(s) for s in statuses)
    if name:
        clauses.append("workflow_name = ?")
        params.append(name)
    if owner:
        clauses.append("owner = ?")
        params.append(owner)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    rows = conn.execute(
        f"SELECT {_WORKFLOW_COLUMNS} FROM workflows {where} "
        f"ORDER BY created_at DESC, workflow_id LIMIT ?",
        (*params, limit),
    ).fetchall()
    return [_record(row) for row in rows]


def _list_logs(conn: sqlite3.Connection, workflow_id: str) -> list[tuple[int, str, str]]:
    rows = conn.execute(
        "SELECT created_at, level, message FROM logs WHERE workflow_id = ? ORDER BY log_id",
        (workflow_id,),
    ).fetchall()
    return [(int(r[0]), str(r[1]), str(r[2])) for r in rows]


def _count_tasks(conn: sqlite3.Connection, now: int) -> dict[str, int]:
    row = conn.execute(
        "SELECT "
        "COALESCE(SUM(CASE WHEN lease_owner IS NOT NULL AND lease_expires_at >= ? THEN 1 END),0),"
        "COALESCE(SUM(CASE WHEN lease_owner IS NOT NULL AND lease_expires_at < ? THEN 1 END), 0),"
        "COALESCE(SUM(CASE WHEN lease_owner IS NULL THEN 1 END), 0) FROM tasks",
        (now, now),
    ).fetchone()
    return {"leased": int(row[0]), "expired": int(row[1]), "queued": int(row[2])}


def _load_events(conn: sqlite3.Connection, workflow_id: str, after: int) -> list[Event]:
    rows = conn.execute(
        "SELECT sequence, kind, payload, created_at FROM events "
        "WHERE workflow_id = ? AND sequence > ? ORDER BY sequence",
        (workflow_id, after),
    ).fetchall()
    return [Event(r[0], EventKind(r[1]), loads(r[2]), r[3]) for r in rows]


def _insert_workflow(conn: sqlite3.Connection, spec: NewWorkflow, now: int) -> None:
    started = {
        "input": spec.input,
        "seed": spec.seed,
        "workflow_name": spec.workflow_name,
        "workflow_version": spec.workflow_version,
        "source_hash": spec.source_hash,
    }
    if spec.parent_id:
        started["parent_id"] = spec.parent_id
    conn.execute(
        "INSERT INTO workflows (workflow_id, workflow_name, workflow_version, status, input, "
        "state, owner, agent, parent_id, parent_seq, source_hash, total_steps, last_sequence, "
        "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?)",
        (
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
            now,
        ),
    )
    conn.execute(
        "INSERT INTO events (workflow_id, sequence, kind, payload, created_at) "
        "VALUES (?, 1, ?, ?, ?)",
        (spec.workflow_id, EventKind.WORKFLOW_STARTED.value, dumps(started), now),
    )
    _ensure_workflow_task(conn, spec.workflow_id, now)


def _create_workflow(
    conn: sqlite3.Connection, spec: NewWorkflow, now: int
) -> tuple[WorkflowRecord, bool]:
    exists = conn.execute(
        "SELECT 1 FROM workflows WHERE workflow_id = ?", (spec.workflow_id,)
    ).fetchone()
    existing = _get_workflow(conn, spec.workflow_id) if exists else None
    if existing is not None:
        if existing.workflow_name != spec.workflow_name:
            raise WorkflowAlreadyExistsError(
                spec.workflow_id, existing.workflow_name, spec.workflow_name
            )
        return existing, False
    _insert_workflow(conn, spec, now)
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


def _ensure_workflow_task(conn: sqlite3.Connection, workflow_id: str, now: int) -> None:
    conn.execute(
        "INSERT INTO tasks (task_key, workflow_id, kind, payload, run_at) "
        "VALUES (?, ?, ?, '{}', ?) ON CONFLICT (task_key) DO NOTHING",
        (workflow_task_key(workflow_id), workflow_id, WORKFLOW_TASK, now),
    )


def _claim_tasks(
    conn: sqlite3.Connection,
    owner: str,
    limit: int,
    lease_ms: int,
    cursor_of: CursorLookup,
    now: int,
    avoid: tuple[str, ...] = (),
) -> list[ClaimedTask]:
    # A leased task's run_at is its lease expiry, so one index finds due and expired tasks.
    skip = f"AND task_key NOT IN ({', '.join('?' * len(avoid))}) " if avoid else ""
    rows = conn.execute(
        "UPDATE tasks SET lease_owner = ?, lease_expires_at = ?, run_at = ?, "
        "attempts = attempts + 1 WHERE task_id IN "
        f"(SELECT task_id FROM tasks WHERE run_at <= ? {skip}ORDER BY run_at LIMIT ?) "
        "RETURNING task_id, task_key, kind, workflow_id, payload, attempts",
        (owner, now + lease_ms, now + lease_ms, now, *avoid, limit),
    ).fetchall()
    claimed = []
    for task_id, key, kind, workflow_id, payload, attempts in rows:
        task = ClaimedTask(task_id, key, kind, workflow_id, loads(payload), attempts, owner)
        if kind == WORKFLOW_TASK and not _attach_history(conn, task, cursor_of):
            continue
        claimed.append(task)
    return claimed


def _attach_history(conn: sqlite3.Connection, task: ClaimedTask, cursor_of: CursorLookup) -> bool:
    """Load what a workflow task needs: only unseen events when the caller's cache is current."""
    row = conn.execute(
        "SELECT workflow_name, status, epoch, processed_sequence, owner, source_hash "
        "FROM workflows WHERE workflow_id = ?",
        (task.workflow_id,),
    ).fetchone()
    if row is None or WorkflowStatus(row[1]).is_closed:
        conn.execute("DELETE FROM tasks WHERE task_id = ?", (task.task_id,))
        return False
    cached = cursor_of(task.workflow_id)
    after = cached[0] if cached is not None and cached[1] == row[2] else 0
    task.workflow = TaskWorkflow(row[0], row[2], row[3], row[4], row[5])
    task.history_after = after
    task.events = _load_events(conn, task.workflow_id, after)
    return True


def _holds_lease(conn: sqlite3.Connection, task: ClaimedTask) -> bool:
    # (owner, attempts) identifies one claim: a re-claim after expiry bumps attempts.
    row = conn.execute(
        "SELECT 1 FROM tasks WHERE task_id = ? AND lease_owner = ? AND attempts = ?",
        (task.task_id, task.owner, task.attempt),
    ).fetchone()
    return row is not None


def _release_claim(conn: sqlite3.Connection, task: ClaimedTask, now: int) -> None:
    """Give a claimed task back, due now, if this claim still holds it."""
    conn.execute(
        "UPDATE tasks SET lease_owner = NULL, lease_expires_at = NULL, run_at = ? "
        "WHERE task_id = ? AND lease_owner = ? AND attempts = ?",
        (now, task.task_id, task.owner, task.attempt),
    )


def _delete_leased(conn: sqlite3.Connection, task: ClaimedTask) -> bool:
    """Delete the task if this claim still holds it; the task row is the exactly-once guard."""
    cursor = conn.execute(
        "DELETE FROM tasks WHERE task_id = ? AND lease_owner = ? AND attempts = ?",
        (task.task_id, task.owner, task.attempt),
    )
    return cursor.rowcount == 1


def _append_events(
    conn: sqlite3.Connection,
    workflow_id: str,
    events: Sequence[NewEvent],
    now: int,
    *,
    open_only: bool = False,
) -> TaskWorkflow | None:
    """Append after the last event (None: the workflow is missing or, if `open_only`, closed).

    Returns the workflow's task view, so callers continuing it need no extra read.
    """
    guard = " AND status IN ('PENDING', 'RUNNING')" if open_only else ""
    row = conn.execute(
        "UPDATE workflows SET last_sequence = last_sequence + ?, updated_at = ? "
        f"WHERE workflow_id = ?{guard} "
        "RETURNING last_sequence, workflow_name, epoch, processed_sequence, owner, source_hash",
        (len(events), now, workflow_id),
    ).fetchone()
    if row is None:
        return None
    _insert_events(conn, workflow_id, int(row[0]) - len(events), events, now)
    return TaskWorkflow(row[1], row[2], row[3], row[4], row[5])


def _insert_events(
    conn: sqlite3.Connection, workflow_id: str, after: int, events: Sequence[NewEvent], now: int
) -> None:
    conn.executemany(
        "INSERT INTO events (workflow_id, sequence, kind, payload, created_at) "
        "VALUES (?, ?, ?, ?, ?)",
        [
            (workflow_id, after + i, e.kind.value, dumps(e.payload), now)
            for i, e in enumerate(events, start=1)
        ],
    )


def _commit_workflow_task(
    conn: sqlite3.Connection,
    task: ClaimedTask,
    activation: Activation,
    seen_sequence: int,
    step: StepProgress | None,
    eager_lease_ms: int,
    now: int,
) -> CommitResult:
    # The activation was computed from the history as of the claim; if another activation
    # committed since (the epoch moved), it would overwrite newer state: refuse, and make
    # the task due again at once so a fresh claim replays the current history.
    if task.workflow is not None:
        row = conn.execute(
            "SELECT epoch FROM workflows WHERE workflow_id = ?", (task.workflow_id,)
        ).fetchone()
        if row is None or int(row[0]) != task.workflow.epoch:
            _release_claim(conn, task, now)
            return CommitResult(is_committed=False)
    # Deleting the task under its lease is the fence: a reclaimed task matches no row.
    if not _delete_leased(conn, task):
        return CommitResult(is_committed=False)
    return _write_activation(conn, task, activation, (), seen_sequence, step, eager_lease_ms, now)


def _write_activation(
    conn: sqlite3.Connection,
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
    row = conn.execute(
        "UPDATE workflows SET last_sequence = last_sequence + ?, status = ?, state = ?, "
        "error = ?, step_index = ?, current_step = COALESCE(?, current_step), "
        "step_description = COALESCE(?, step_description), processed_sequence = ?, "
        "epoch = epoch + 1, updated_at = ?, source_hash = COALESCE(?, source_hash) "
        "WHERE workflow_id = ? RETURNING last_sequence, epoch",
        (
            len(events),
            activation.status.value,
            dumps(activation.state),
            dumps(activation.error) if activation.error else None,
            activation.step_index,
            step.name if step else None,
            step.description if step else None,
            processed_sequence,
            now,
            activation.source_hash,
            workflow_id,
        ),
    ).fetchone()
    last_sequence, epoch = int(row[0]), int(row[1])
    previous_last = last_sequence - len(events) + len(leading)
    _insert_events(conn, workflow_id, last_sequence - len(events), events, now)
    closed = activation.status is not WorkflowStatus.RUNNING
    eager = _insert_tasks(conn, task, activation, 0 if closed else eager_lease_ms, now)
    if activation.cancel_task_keys:
        conn.executemany(
            "DELETE FROM tasks WHERE task_key = ?", [(k,) for k in activation.cancel_task_keys]
        )
    for child in activation.children:
        _start_child(conn, task, child, now)
    if activation.logs:
        conn.executemany(
            "INSERT INTO logs (workflow_id, level, message, created_at) VALUES (?, ?, ?, ?)",
            [(workflow_id, level, message, at or now) for level, message, at in activation.logs],
        )
    if closed:
        _close_workflow(conn, workflow_id, activation, now)
        return CommitResult(is_committed=True, epoch=epoch, last_sequence=last_sequence)
    if previous_last > processed_sequence:
        # Events arrived while this task ran: schedule the workflow again to process them.
        _ensure_workflow_task(conn, workflow_id, now)
        return CommitResult(
            is_committed=True,
            needs_rerun=True,
            epoch=epoch,
            tasks=eager,
            last_sequence=last_sequence,
        )
    return CommitResult(is_committed=True, epoch=epoch, tasks=eager, last_sequence=last_sequence)


def _complete_and_continue(
    conn: sqlite3.Connection,
    task: ClaimedTask,
    result: NewEvent,
    expected: tuple[int, int],
    activation: Activation,
    step: StepProgress | None,
    eager_lease_ms: int,
    now: int,
) -> CommitResult:
    """Record an activity result and the activation it led to, if nothing else happened.

    The worker drove its live run with the result before asking; that is valid only if the
    history still ends where the run saw it (same last sequence and epoch) and no workflow
    task is pending or running elsewhere. Otherwise only the result is recorded, as usual.
    """
    if not _delete_leased(conn, task):
        return CommitResult(is_committed=False, is_recorded=False)
    workflow_id = task.workflow_id
    row = conn.execute(
        "SELECT w.last_sequence, w.epoch, w.status, t.task_id FROM workflows w "
        "LEFT JOIN tasks t ON t.task_key = ? WHERE w.workflow_id = ?",
        (workflow_task_key(workflow_id), workflow_id),
    ).fetchone()
    if row is None or WorkflowStatus(row[2]).is_closed:
        return CommitResult(is_committed=False)
    if (row[0], row[1]) != expected or row[3] is not None:
        _append_events(conn, workflow_id, [result], now)
        _ensure_workflow_task(conn, workflow_id, now)
        return CommitResult(is_committed=False)
    return _write_activation(
        conn, task, activation, [result], expected[0] + 1, step, eager_lease_ms, now
    )


def _insert_tasks(
    conn: sqlite3.Connection,
    task: ClaimedTask,
    activation: Activation,
    eager_lease_ms: int,
    now: int,
) -> tuple[ClaimedTask, ...]:
    """Create the activation's tasks; activity tasks leased to `task.owner` when eager."""
    workflow_id = task.workflow_id
    lazy = [t for t in activation.tasks if not eager_lease_ms or t.kind != ACTIVITY_TASK]
    if lazy:
        conn.executemany(
            "INSERT INTO tasks (task_key, workflow_id, kind, payload, run_at) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (task_key) DO NOTHING",
            [(t.key, workflow_id, t.kind, dumps(t.payload), t.run_at or now) for t in lazy],
        )
    if not eager_lease_ms:
        return ()
    expires = now + eager_lease_ms
    eager = []
    for spec in activation.tasks:
        if spec.kind != ACTIVITY_TASK:
            continue
        row = conn.execute(
            "INSERT INTO tasks (task_key, workflow_id, kind, payload, run_at, attempts, "
            "lease_owner, lease_expires_at) VALUES (?, ?, ?, ?, ?, 1, ?, ?) "
            "ON CONFLICT (task_key) DO NOTHING RETURNING task_id",
            (spec.key, workflow_id, spec.kind, dumps(spec.payload), expires, task.owner, expires),
        ).fetchone()
        if row is not None:
            eager.append(
                ClaimedTask(row[0], spec.key, spec.kind, workflow_id, spec.payload, 1, task.owner)
            )
    return tuple(eager)


def _start_child(conn: sqlite3.Connection, task: ClaimedTask, child: ChildStart, now: int) -> None:
    exists = conn.execute(
        "SELECT 1 FROM workflows WHERE workflow_id = ?", (child.workflow_id,)
    ).fetchone()
    if exists:
        return
    parent = task.workflow
    _insert_workflow(
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


def _close_workflow(
    conn: sqlite3.Connection, workflow_id: str, activation: Activation, now: int
) -> None:
    conn.execute("DELETE FROM tasks WHERE workflow_id = ?", (workflow_id,))
    row = conn.execute(
        "SELECT parent_id, parent_seq FROM workflows WHERE workflow_id = ?", (workflow_id,)
    ).fetchone()
    parent_id, parent_seq = row[0], row[1]
    if parent_id:
        base: dict[str, JSON] = {"seq": parent_seq, "workflow_id": workflow_id}
        if activation.status is WorkflowStatus.COMPLETED:
            event = NewEvent(EventKind.CHILD_COMPLETED, {**base, "state": activation.state})
        else:
            event = NewEvent(EventKind.CHILD_FAILED, {**base, "error": activation.error})
        _append_to_open(conn, parent_id, event, now)
    if activation.status is WorkflowStatus.CANCELED:
        children = conn.execute(
            "SELECT workflow_id FROM workflows WHERE parent_id = ? AND status IN (?, ?)",
            (workflow_id, WorkflowStatus.PENDING.value, WorkflowStatus.RUNNING.value),
        ).fetchall()
        reason = {"reason": f"parent workflow {workflow_id!r} was cancelled"}
        for (child_id,) in children:
            _append_to_open(conn, child_id, NewEvent(EventKind.CANCEL_REQUESTED, reason), now)


def _append_to_open(conn: sqlite3.Connection, workflow_id: str, event: NewEvent, now: int) -> bool:
    if _append_events(conn, workflow_id, [event], now, open_only=True) is None:
        return False
    _ensure_workflow_task(conn, workflow_id, now)
    return True


def _complete_task(
    conn: sqlite3.Connection,
    task: ClaimedTask,
    event: NewEvent,
    continue_with: CursorLookup | None,
    lease_ms: int,
    now: int,
) -> Completion:
    """Record an activity outcome or timer firing exactly once (the task row is the guard)."""
    if not _delete_leased(conn, task):
        return Completion(is_recorded=False)
    workflow_id = task.workflow_id
    workflow = _append_events(conn, workflow_id, [event], now, open_only=True)
    if workflow is None:
        return Completion(is_recorded=True)  # the workflow already finished: nothing to wake
    cached = None if continue_with is None else continue_with(workflow_id)
    if cached is None:
        _ensure_workflow_task(conn, workflow_id, now)
        return Completion(is_recorded=True)
    # The caller holds the live run: lease its workflow task here unless someone else has it.
    expires = now + lease_ms
    key = workflow_task_key(workflow_id)
    row = conn.execute(
        "INSERT INTO tasks (task_key, workflow_id, kind, payload, run_at, attempts, lease_owner, "
        "lease_expires_at) VALUES (?, ?, ?, '{}', ?, 1, ?, ?) ON CONFLICT (task_key) DO UPDATE "
        "SET lease_owner = excluded.lease_owner, attempts = tasks.attempts + 1, "
        "run_at = excluded.run_at, lease_expires_at = excluded.lease_expires_at "
        "WHERE tasks.lease_owner IS NULL OR tasks.lease_expires_at < ? RETURNING task_id, attempts",
        (key, workflow_id, WORKFLOW_TASK, expires, task.owner, expires, now),
    ).fetchone()
    if row is None:
        return Completion(is_recorded=True)
    claimed = ClaimedTask(row[0], key, WORKFLOW_TASK, workflow_id, {}, row[1], task.owner)
    after = cached[0] if cached[1] == workflow.epoch else 0
    claimed.workflow = workflow
    claimed.history_after = after
    claimed.events = _load_events(conn, workflow_id, after)
    return Completion(is_recorded=True, next_task=claimed)


def _retry_activity(
    conn: sqlite3.Connection,
    task: ClaimedTask,
    run_at: int,
    payload: dict[str, JSON],
    error: str,
    now: int,
) -> bool:
    if not _holds_lease(conn, task):
        return False
    conn.execute(
        "UPDATE tasks SET lease_owner = NULL, lease_expires_at = NULL, run_at = ?, payload = ? "
        "WHERE task_id = ?",
        (run_at, dumps(payload), task.task_id),
    )
    conn.execute(
        "INSERT INTO logs (workflow_id, level, message, created_at) VALUES (?, 'WARNING', ?, ?)",
        (task.workflow_id, error, now),
    )
    return True


def _append_external(
    conn: sqlite3.Connection, workflow_id: str, event: NewEvent, action: str, now: int
) -> None:
    row = conn.execute(
        "SELECT status FROM workflows WHERE workflow_id = ?", (workflow_id,)
    ).fetchone()
    if row is None:
        raise WorkflowNotFoundError(workflow_id)
    if WorkflowStatus(row[0]).is_closed:
        raise WorkflowClosedError(workflow_id, row[0], action)
    _append_events(conn, workflow_id, [event], now)
    _ensure_workflow_task(conn, workflow_id, now)


def _extend_leases(conn: sqlite3.Connection, owner: str, lease_ms: int, now: int) -> None:
    conn.execute(
        "UPDATE tasks SET lease_expires_at = ?, run_at = ? WHERE lease_owner = ?",
        (now + lease_ms, now + lease_ms, owner),
    )


def _release_tasks(conn: sqlite3.Connection, owner: str, now: int) -> None:
    conn.execute(
        "UPDATE tasks SET lease_owner = NULL, lease_expires_at = NULL, run_at = ? "
        "WHERE lease_owner = ?",
        (now, owner),
    )


# -- operator views (read-only; portable SQL apart from the PRAGMA reads) ---------------


def _collect_stats(conn: sqlite3.Connection, now: int) -> StoreStats:
    workflows = {status.value: 0 for status in WorkflowStatus}
    for status, count in conn.execute("SELECT status, COUNT(*) FROM workflows GROUP BY status"):
        workflows[str(status)] = int(count)
    row = conn.execute(
        "SELECT "
        "COALESCE(SUM(CASE WHEN lease_owner IS NULL AND run_at <= ? THEN 1 ELSE 0 END), 0), "
        "COALESCE(SUM(CASE WHEN lease_owner IS NULL AND run_at > ? THEN 1 ELSE 0 END), 0), "
        "COALESCE(SUM(CASE WHEN lease_owner IS NOT NULL AND lease_expires_at >= ? "
        "THEN 1 ELSE 0 END), 0), "
        "COALESCE(SUM(CASE WHEN lease_owner IS NOT NULL AND lease_expires_at < ? "
        "THEN 1 ELSE 0 END), 0) FROM tasks",
        (now, now, now, now),
    ).fetchone()
    tasks = dict(zip(("due", "scheduled", "leased", "expired"), map(int, row), strict=True))
    return StoreStats(workflows=workflows, tasks=tasks)


def _diagnose(conn: sqlite3.Connection, now: int) -> Diagnosis:
    settings = {
        pragma: str(conn.execute(f"PRAGMA {pragma}").fetchone()[0])
        for pragma in ("journal_mode", "synchronous", "busy_timeout")
    }
    synchronous = ("off", "normal", "full", "extra")
    if settings["synchronous"].isdigit() and int(settings["synchronous"]) < len(synchronous):
        settings["synchronous"] = synchronous[int(settings["synchronous"])]
    version = conn.execute(
        "SELECT COALESCE(MAX(version), 0) FROM schema_migrations WHERE component = ?",
        (SCHEMA_COMPONENT,),
    ).fetchone()[0]
    expired = conn.execute(
        "SELECT task_id, workflow_id, lease_owner FROM tasks "
        "WHERE lease_owner IS NOT NULL AND lease_expires_at < ? ORDER BY task_id",
        (now,),
    ).fetchall()
    # Open, no task row, and an event the code has not seen yet: nothing will ever run it.
    # (Events after processed_sequence that the workflow wrote itself do not count.)
    delivered = [k.value for k in EventKind if k not in COMMAND_KINDS and k not in CLOSING_KINDS]
    without_task = (
        "FROM workflows w WHERE w.status IN (?, ?) "
        "AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.workflow_id = w.workflow_id)"
    )
    open_statuses = (WorkflowStatus.PENDING.value, WorkflowStatus.RUNNING.value)
    stuck = conn.execute(
        f"SELECT w.workflow_id {without_task} AND EXISTS (SELECT 1 FROM events e "
        "WHERE e.workflow_id = w.workflow_id AND e.sequence > w.processed_sequence "
        f"AND e.kind IN ({','.join('?' * len(delivered))})) ORDER BY w.created_at",
        (*open_statuses, *delivered),
    ).fetchall()
    stuck_ids = {str(r[0]) for r in stuck}
    candidates = [
        str(r[0])
        for r in conn.execute(
            f"SELECT w.workflow_id {without_task} ORDER BY w.created_at", open_statuses
        ).fetchall()
        if str(r[0]) not in stuck_ids
    ]
    waits = conn.execute(
        "SELECT e.workflow_id, e.sequence, e.kind, e.payload, e.created_at FROM events e "
        f"WHERE e.kind IN ({','.join('?' * len(WAIT_KINDS))}) AND e.workflow_id IN "
        f"(SELECT w.workflow_id {without_task}) ORDER BY e.workflow_id, e.sequence",
        (*(k.value for k in WAIT_KINDS), *open_statuses),
    ).fetchall()
    idle, lost = split_idle(
        candidates,
        (
            (str(r[0]), Event(r[1], EventKind(r[2]), loads(r[3]), r[4]))
            for r in waits
            if str(r[0]) not in stuck_ids
        ),
    )
    return Diagnosis(
        backend="sqlite",
        settings=settings,
        schema_version=int(version),
        latest_schema_version=len(MIGRATIONS),
        expired_leases=[(int(r[0]), str(r[1]), str(r[2])) for r in expired],
        stuck=[str(r[0]) for r in stuck],
        idle=idle,
        lost=lost,
    )
