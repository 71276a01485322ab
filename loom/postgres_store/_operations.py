"""PostgreSQL operation bodies: each runs inside one transaction on a pooled connection.

Lock order: a write on a workflow locks its `workflows` row before any of its task rows.
Claims lock task rows only and never wait for a workflow row, so the two cannot deadlock.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

from loom._json import JSON, dumps, loads
from loom.exceptions import (
    WorkflowAlreadyExistsError,
    WorkflowClosedError,
    WorkflowNotFoundError,
)
from loom.history import CLOSING_KINDS, COMMAND_KINDS, Event, EventKind, NewEvent, WorkflowStatus
from loom.postgres_store._database import (
    CHANNEL,
    MIGRATIONS,
    SCHEMA_COMPONENT,
    Connection,
    Rollback,
)
from loom.replay import ACTIVITY_TASK, WORKFLOW_TASK, Activation, ChildStart, workflow_task_key
from loom.sqlite_store import _WORKFLOW_COLUMNS, _record
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
    avoid: tuple[str, ...] = (),
) -> list[ClaimedTask]:
    # A leased task's run_at is its lease expiry, so one index finds due and expired tasks;
    # SKIP LOCKED lets concurrent claimers take disjoint batches without waiting.
    skip = "AND task_key <> ALL($5::text[]) " if avoid else ""
    rows = await conn.fetch(
        "UPDATE tasks SET lease_owner = $1, lease_expires_at = $2, run_at = $2, "
        "attempts = attempts + 1 WHERE task_id IN "
        f"(SELECT task_id FROM tasks WHERE run_at <= $3 {skip}ORDER BY run_at LIMIT $4 "
        "FOR UPDATE SKIP LOCKED) "
        "RETURNING task_id, task_key, kind, workflow_id, payload, attempts",
        owner,
        now + lease_ms,
        now,
        limit,
        *([list(avoid)] if avoid else []),
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
        "SELECT workflow_id, workflow_name, status, epoch, processed_sequence, owner, "
        "source_hash FROM workflows WHERE workflow_id = ANY($1::text[])",
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
        task.workflow = TaskWorkflow(row[1], row[3], row[4], row[5], row[6])
        task.history_after = after[task.workflow_id]
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


async def _delete_leased(conn: Connection, task: ClaimedTask) -> bool:
    """Delete the task if this claim still holds it: the fence and the exactly-once guard.

    (owner, attempts) identifies one claim: a re-claim after expiry bumps attempts, so a
    reclaimed task matches no row. Callers lock the workflow row first (lock order) and raise
    Rollback when this returns False, undoing what they wrote before it.
    """
    deleted = await conn.fetchval(
        "DELETE FROM tasks WHERE task_id = $1 AND lease_owner = $2 AND attempts = $3 RETURNING 1",
        task.task_id,
        task.owner,
        task.attempt,
    )
    return deleted is not None


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
        "RETURNING last_sequence, workflow_name, epoch, processed_sequence, owner, source_hash",
        len(events),
        now,
        workflow_id,
    )
    if row is None:
        return None
    await _insert_events(conn, workflow_id, int(row[0]) - len(events), events, now)
    return TaskWorkflow(row[1], row[2], row[3], row[4], row[5])


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
    # See the SQLite store: an activation computed from a history older than the row's
    # epoch must not overwrite newer state; the task becomes due again for a fresh replay.
    epoch = None if task.workflow is None else task.workflow.epoch
    row = await _update_workflow(conn, task, activation, 0, seen_sequence, step, now, epoch=epoch)
    if row is None:
        await conn.execute(
            "UPDATE tasks SET lease_owner = NULL, lease_expires_at = NULL, run_at = $1 "
            "WHERE task_id = $2 AND lease_owner = $3 AND attempts = $4",
            now,
            task.task_id,
            task.owner,
            task.attempt,
        )
        return CommitResult(is_committed=False)
    return await _apply_activation(
        conn, task, activation, row, (), seen_sequence, eager_lease_ms, now
    )


_OPEN_GUARD = (
    " AND last_sequence = $12 AND epoch = $13 AND status IN ('PENDING', 'RUNNING') "
    "AND NOT EXISTS (SELECT 1 FROM tasks WHERE task_key = $14)"
)


async def _update_workflow(
    conn: Connection,
    task: ClaimedTask,
    activation: Activation,
    leading: int,
    processed_sequence: int,
    step: StepProgress | None,
    now: int,
    expected: tuple[int, int] | None = None,
    epoch: int | None = None,
) -> asyncpg.Record | None:
    """Write the activation's row, which locks it first (see lock order).

    With `expected`, only if the history still ends at (last sequence, epoch) and no workflow
    task exists; None otherwise. Whoever creates a workflow task also bumps last_sequence or
    epoch in that transaction, so the re-checked row catches one committed while we waited.
    """
    guard = "" if expected is None else _OPEN_GUARD
    extra: tuple[object, ...] = ()
    if expected is not None:
        extra = (*expected, workflow_task_key(task.workflow_id))
    elif epoch is not None:
        guard, extra = " AND epoch = $12", (epoch,)
    row = await conn.fetchrow(
        "UPDATE workflows SET last_sequence = last_sequence + $1, status = $2, state = $3, "
        "error = $4, step_index = $5, current_step = COALESCE($6, current_step), "
        "step_description = COALESCE($7, step_description), processed_sequence = $8, "
        "epoch = epoch + 1, updated_at = $9, source_hash = COALESCE($11, source_hash) "
        f"WHERE workflow_id = $10{guard} "
        "RETURNING last_sequence, epoch, parent_id, parent_seq",
        leading + len(activation.events),
        activation.status.value,
        dumps(activation.state),
        dumps(activation.error) if activation.error else None,
        activation.step_index,
        step.name if step else None,
        step.description if step else None,
        processed_sequence,
        now,
        task.workflow_id,
        activation.source_hash,
        *extra,
    )
    return row


async def _apply_activation(
    conn: Connection,
    task: ClaimedTask,
    activation: Activation,
    row: asyncpg.Record,
    leading: Sequence[NewEvent],
    processed_sequence: int,
    eager_lease_ms: int,
    now: int,
) -> CommitResult:
    """Append `leading` events, then the activation's, and apply its effects."""
    workflow_id = task.workflow_id
    events = [*leading, *activation.events]
    last_sequence, epoch = int(row[0]), int(row[1])
    closed = activation.status is not WorkflowStatus.RUNNING
    after = last_sequence - len(events)
    lease_ms = 0 if closed else eager_lease_ms
    eager = await _fence_and_insert(conn, task, activation, after, events, lease_ms, now)
    if eager is None:
        # Lost to a re-claim: roll back the row update; complete_and_continue (which brings
        # the activity result as `leading`) recorded nothing either.
        raise Rollback(CommitResult(is_committed=False, is_recorded=not leading))
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
    if last_sequence - len(activation.events) > processed_sequence:
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
    """Record an activity result and the activation it led to, if nothing else happened."""
    processed = expected[0] + 1
    row = await _update_workflow(conn, task, activation, 1, processed, step, now, expected)
    if row is not None:
        return await _apply_activation(
            conn, task, activation, row, [result], processed, eager_lease_ms, now
        )
    # The history moved on (or another run holds the workflow task): record the result only.
    workflow = await _append_events(conn, task.workflow_id, [result], now, open_only=True)
    if not await _delete_leased(conn, task):
        raise Rollback(CommitResult(is_committed=False, is_recorded=False))
    if workflow is not None:
        await _ensure_workflow_task(conn, task.workflow_id, now)
    return CommitResult(is_committed=False)


async def _fence_and_insert(
    conn: Connection,
    task: ClaimedTask,
    activation: Activation,
    after: int,
    events: Sequence[NewEvent],
    eager_lease_ms: int,
    now: int,
) -> tuple[ClaimedTask, ...] | None:
    """In one statement: delete `task` under its lease (the fence), append `events` after
    sequence `after` and create the activation's tasks, activity tasks leased to `task.owner`
    when eager. Returns the eager tasks, or None when the lease was lost (the caller rolls
    back: the inserts then vanish with the transaction)."""
    workflow_id = task.workflow_id
    expires = now + eager_lease_ms
    specs = activation.tasks
    is_eager = [bool(eager_lease_ms) and t.kind == ACTIVITY_TASK for t in specs]
    row = await conn.fetchrow(
        "WITH fence AS (DELETE FROM tasks WHERE task_id = $1 AND lease_owner = $2 "
        "AND attempts = $3 RETURNING 1), "
        "e AS (INSERT INTO events (workflow_id, sequence, kind, payload, created_at) "
        "SELECT $4, $5 + n, kind, payload, $6 "
        "FROM unnest($7::text[], $8::text[]) WITH ORDINALITY AS e (kind, payload, n)), "
        "t AS (INSERT INTO tasks (task_key, workflow_id, kind, payload, run_at, attempts, "
        "lease_owner, lease_expires_at) SELECT key, $4, kind, payload, run_at, attempts, "
        "owner, expires FROM unnest($9::text[], $10::text[], $11::text[], $12::bigint[], "
        "$13::bigint[], $14::text[], $15::bigint[]) "
        "AS t (key, kind, payload, run_at, attempts, owner, expires) "
        "ON CONFLICT (task_key) DO NOTHING RETURNING task_id, task_key, lease_owner) "
        "SELECT (SELECT COUNT(*) FROM fence) AS fenced, "
        "ARRAY(SELECT task_id FROM t WHERE lease_owner IS NOT NULL) AS ids, "
        "ARRAY(SELECT task_key FROM t WHERE lease_owner IS NOT NULL) AS keys",
        task.task_id,
        task.owner,
        task.attempt,
        workflow_id,
        after,
        now,
        [e.kind.value for e in events],
        [dumps(e.payload) for e in events],
        [t.key for t in specs],
        [t.kind for t in specs],
        [dumps(t.payload) for t in specs],
        [expires if eager else t.run_at or now for t, eager in zip(specs, is_eager, strict=True)],
        [1 if eager else 0 for eager in is_eager],
        [task.owner if eager else None for eager in is_eager],
        [expires if eager else None for eager in is_eager],
    )
    if not row["fenced"]:
        return None
    ids = dict(zip(row["keys"], row["ids"], strict=True))
    return tuple(
        ClaimedTask(ids[t.key], t.key, t.kind, workflow_id, t.payload, 1, task.owner)
        for t in specs
        if t.key in ids
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
    if parent_id or activation.status is WorkflowStatus.CANCELED:
        # Delivered at commit: workers in other processes pick up the woken workflows.
        await conn.execute("SELECT pg_notify($1, '')", CHANNEL)


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
    workflow_id = task.workflow_id
    workflow = await _append_events(conn, workflow_id, [event], now, open_only=True)
    if not await _delete_leased(conn, task):  # after the workflow row: lock order
        raise Rollback(Completion(is_recorded=False))
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
    claimed.history_after = after
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
    stuck_ids = {str(r[0]) for r in stuck}
    candidates = [
        str(r[0])
        for r in await conn.fetch(
            f"SELECT w.workflow_id {without_task} ORDER BY w.created_at", open_statuses
        )
        if str(r[0]) not in stuck_ids
    ]
    waits = await conn.fetch(
        "SELECT e.workflow_id, e.sequence, e.kind, e.payload, e.created_at FROM events e "
        "WHERE e.kind = ANY($2::text[]) AND e.workflow_id IN "
        f"(SELECT w.workflow_id {without_task}) ORDER BY e.workflow_id, e.sequence",
        open_statuses,
        [k.value for k in WAIT_KINDS],
    )
    idle, lost = split_idle(
        candidates,
        (
            (str(r[0]), Event(r[1], EventKind(r[2]), loads(r[3]), r[4]))
            for r in waits
            if str(r[0]) not in stuck_ids
        ),
    )
    return Diagnosis(
        backend="postgresql",
        settings=settings,
        schema_version=int(version),
        latest_schema_version=len(MIGRATIONS),
        expired_leases=[(int(r[0]), str(r[1]), str(r[2])) for r in expired],
        stuck=[str(r[0]) for r in stuck],
        idle=idle,
        lost=lost,
    )
