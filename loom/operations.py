"""The store's operations, written once for SQLite and PostgreSQL.

Each operation is a coroutine over one `Connection` (see `loom.dialect`), run by the store
inside one transaction (or, for `Mode.STATEMENTS`, as statements that are each whole).
Fencing happens here: a task is held by (lease_owner, attempts), and deleting the task row
under that lease is both the fence and the exactly-once guard.

Lock order (it matters on PostgreSQL, where writers run concurrently): a write on a workflow
locks its `workflows` row before any of its task rows. Claims lock task rows only and never
wait for a workflow row, so the two cannot deadlock; the rare cross-workflow cycle (a child
closing while its parent cancels it) is retried by the PostgreSQL store. Finding a lost lease
after the row is written raises `Rollback`, which undoes the operation's writes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from loom._json import JSON, dumps, loads
from loom.activation import (
    ACTIVITY_TASK,
    ACTOR_PREFIX,
    MAILBOX,
    WORKFLOW_TASK,
    Activation,
    ActorStart,
    ChildStart,
    Restart,
    workflow_task_key,
)
from loom.dialect import Connection, Rollback
from loom.exceptions import (
    DefinitionConflictError,
    WorkflowAlreadyExistsError,
    WorkflowClosedError,
    WorkflowNotFoundError,
)
from loom.history import CLOSING_KINDS, COMMAND_KINDS, Event, EventKind, NewEvent, WorkflowStatus
from loom.schema import MIGRATIONS, SCHEMA_COMPONENT
from loom.store import (
    WAIT_KINDS,
    ClaimedTask,
    CommitResult,
    Completion,
    CursorLookup,
    DefinitionRecord,
    Diagnosis,
    NewWorkflow,
    StepProgress,
    StoreStats,
    TaskWorkflow,
    WorkflowRecord,
    split_idle,
)

WORKFLOW_COLUMNS = (
    "workflow_id, workflow_name, workflow_version, status, input, state, error, owner, agent, "
    "parent_id, current_step, step_description, step_index, total_steps, last_sequence, "
    "processed_sequence, epoch, created_at, updated_at"
)
_OPEN = "status IN ('PENDING', 'RUNNING')"


def _record(row: Any) -> WorkflowRecord:
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


def _event(row: Any, at: int = 0) -> Event:
    """An event from (sequence, kind, payload, created_at) starting at column `at`."""
    return Event(row[at], EventKind(row[at + 1]), loads(row[at + 2]), row[at + 3])


# -- reads ---------------------------------------------------------------------------------


async def get_workflow(conn: Connection, workflow_id: str) -> WorkflowRecord | None:
    row = await conn.fetchrow(
        f"SELECT {WORKFLOW_COLUMNS} FROM workflows WHERE workflow_id = $1", workflow_id
    )
    return _record(row) if row else None


async def get_workflows(conn: Connection, workflow_ids: list[str]) -> list[WorkflowRecord]:
    rows = await conn.fetch(
        f"SELECT {WORKFLOW_COLUMNS} FROM workflows WHERE {conn.dialect.any('workflow_id', 1)}",
        workflow_ids,
    )
    return [_record(row) for row in rows]


async def get_statuses(conn: Connection, workflow_ids: list[str]) -> dict[str, WorkflowStatus]:
    rows = await conn.fetch(
        f"SELECT workflow_id, status FROM workflows WHERE {conn.dialect.any('workflow_id', 1)}",
        workflow_ids,
    )
    return {row[0]: WorkflowStatus(row[1]) for row in rows}


async def list_workflows(
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
        clauses.append(conn.dialect.any("status", len(params)))
    if name:
        params.append(name)
        clauses.append(f"workflow_name = ${len(params)}")
    if owner:
        params.append(owner)
        clauses.append(f"owner = ${len(params)}")
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    params.append(limit)
    rows = await conn.fetch(
        f"SELECT {WORKFLOW_COLUMNS} FROM workflows {where} "
        f"ORDER BY created_at DESC, workflow_id LIMIT ${len(params)}",
        *params,
    )
    return [_record(row) for row in rows]


async def list_logs(conn: Connection, workflow_id: str) -> list[tuple[int, str, str]]:
    rows = await conn.fetch(
        "SELECT created_at, level, message FROM logs WHERE workflow_id = $1 ORDER BY log_id",
        workflow_id,
    )
    return [(int(r[0]), str(r[1]), str(r[2])) for r in rows]


async def count_tasks(conn: Connection, now: int) -> dict[str, int]:
    row = await conn.fetchrow(
        "SELECT "
        "COALESCE(SUM(CASE WHEN lease_owner IS NOT NULL AND lease_expires_at >= $1 THEN 1 END),0),"
        "COALESCE(SUM(CASE WHEN lease_owner IS NOT NULL AND lease_expires_at < $1 THEN 1 END),0),"
        "COALESCE(SUM(CASE WHEN lease_owner IS NULL THEN 1 END), 0) FROM tasks",
        now,
    )
    return {"leased": int(row[0]), "expired": int(row[1]), "queued": int(row[2])}


async def task_horizon(conn: Connection, now: int) -> tuple[int, int | None]:
    row = await conn.fetchrow(
        "SELECT COUNT(CASE WHEN lease_owner IS NOT NULL OR run_at <= $1 THEN 1 END), "
        "MIN(CASE WHEN lease_owner IS NULL AND run_at > $1 THEN run_at END) FROM tasks",
        now,
    )
    return int(row[0]), None if row[1] is None else int(row[1])


async def load_events(conn: Connection, workflow_id: str, after: int) -> list[Event]:
    rows = await conn.fetch(
        "SELECT sequence, kind, payload, created_at FROM events "
        "WHERE workflow_id = $1 AND sequence > $2 ORDER BY sequence",
        workflow_id,
        after,
    )
    return [_event(r) for r in rows]


# -- workflows and tasks -------------------------------------------------------------------

_INSERT_WORKFLOW = (
    "INSERT INTO workflows (workflow_id, workflow_name, workflow_version, status, "
    "input, state, owner, agent, parent_id, parent_seq, source_hash, total_steps, "
    "last_sequence, created_at, updated_at) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 1, $13, $13) "
    "ON CONFLICT (workflow_id) DO NOTHING RETURNING workflow_id"
)
_INSERT_STARTED = (
    "INSERT INTO events (workflow_id, sequence, kind, payload, created_at) "
    "SELECT $1, 1, $14, $15, $13"
)
_INSERT_FIRST_TASK = (
    "INSERT INTO tasks (task_key, workflow_id, kind, payload, run_at) "
    "SELECT $16, $1, $17, '{}', $13"
)


async def _insert_workflow(conn: Connection, spec: NewWorkflow, now: int) -> bool:
    """Insert the row, its WORKFLOW_STARTED event and its first task; False if it exists."""
    started: dict[str, JSON] = {
        "input": spec.input,
        "seed": spec.seed,
        "workflow_name": spec.workflow_name,
        "workflow_version": spec.workflow_version,
        "source_hash": spec.source_hash,
    }
    if spec.parent_id:
        started["parent_id"] = spec.parent_id
    args = (
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
    if conn.dialect.writable_ctes:  # one round trip, atomic without a transaction
        inserted = await conn.fetchval(
            f"WITH w AS ({_INSERT_WORKFLOW}), "
            f"e AS ({_INSERT_STARTED} FROM w), "
            f"t AS ({_INSERT_FIRST_TASK} FROM w ON CONFLICT (task_key) DO NOTHING) "
            "SELECT COUNT(*) FROM w",
            *args,
        )
        return bool(inserted)
    if await conn.fetchval(_INSERT_WORKFLOW, *args) is None:
        return False
    await conn.execute(_INSERT_STARTED, *args)
    await conn.execute(f"{_INSERT_FIRST_TASK} WHERE true ON CONFLICT (task_key) DO NOTHING", *args)
    return True


async def create_workflow(
    conn: Connection, spec: NewWorkflow, now: int
) -> tuple[WorkflowRecord, bool]:
    if not await _insert_workflow(conn, spec, now):
        existing = await get_workflow(conn, spec.workflow_id)
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


async def claim_tasks(
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
    skip = f"AND {conn.dialect.none_of('task_key', 5)} " if avoid else ""
    rows = await conn.fetch(
        "UPDATE tasks SET lease_owner = $1, lease_expires_at = $2, run_at = $2, "
        "attempts = attempts + 1 WHERE task_id IN "
        f"(SELECT task_id FROM tasks WHERE run_at <= $3 {skip}ORDER BY run_at LIMIT $4"
        f"{conn.dialect.skip_locked}) "
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
    d = conn.dialect
    rows = await conn.fetch(
        "SELECT workflow_id, workflow_name, status, epoch, processed_sequence, owner, "
        f"source_hash FROM workflows WHERE {d.any('workflow_id', 1)}",
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
        # Events after the caller's cursor even when its epoch is behind (its run's commit
        # may be in flight): the worker checks the epoch and loads the rest if it must.
        after[task.workflow_id] = cached[0] if cached is not None else 0
        task.workflow = TaskWorkflow(row[1], row[3], row[4], row[5], row[6])
        task.history_after = after[task.workflow_id]
        task.events = []
    if dropped:
        await conn.execute(f"DELETE FROM tasks WHERE {d.any('task_id', 1, 'bigint')}", [*dropped])
    if after:
        cursors = d.rows("c", [("workflow_id", "text"), ("after", "bigint")], 1)
        events = await conn.fetch(
            "SELECT e.workflow_id, e.sequence, e.kind, e.payload, e.created_at FROM events e "
            f"JOIN {cursors} ON e.workflow_id = c.workflow_id AND e.sequence > c.after "
            "ORDER BY e.workflow_id, e.sequence",
            *d.columns(list(after), list(after.values())),
        )
        by_workflow: dict[str, list[Event]] = {}
        for r in events:
            by_workflow.setdefault(r[0], []).append(_event(r, 1))
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
    """Append after the last event (None: the workflow is missing or, if `open_only`, closed).

    Returns the workflow's task view, so callers continuing it need no extra read.
    """
    guard = f" AND {_OPEN}" if open_only else ""
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
    await conn.execute(
        _insert_events(conn, 1),
        workflow_id,
        int(row[0]) - len(events),
        now,
        *conn.dialect.columns([e.kind.value for e in events], [dumps(e.payload) for e in events]),
    )
    return TaskWorkflow(row[1], row[2], row[3], row[4], row[5])


def _insert_events(conn: Connection, first: int) -> str:
    """Events of workflow `$first`, numbered after sequence `$first+1`, created at
    `$first+2`, from arrays of kinds and payloads in `$first+3` and `$first+4`."""
    events = conn.dialect.rows(
        "e", [("kind", "text"), ("payload", "text")], first + 3, ordinality="n"
    )
    return (
        "INSERT INTO events (workflow_id, sequence, kind, payload, created_at) "
        f"SELECT ${first}, ${first + 1} + n, kind, payload, ${first + 2} FROM {events}"
    )


async def commit_workflow_task(
    conn: Connection,
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
    f" AND last_sequence = $12 AND epoch = $13 AND {_OPEN} "
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
) -> Any | None:
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
    return await conn.fetchrow(
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


async def _apply_activation(
    conn: Connection,
    task: ClaimedTask,
    activation: Activation,
    row: Any,
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
    d = conn.dialect
    if activation.cancel_task_keys:
        await conn.execute(
            f"DELETE FROM tasks WHERE {d.any('task_key', 1)}", list(activation.cancel_task_keys)
        )
    for child in activation.children:
        await _start_child(conn, task, child, now)
    if activation.messages or activation.replies:
        await _deliver_mail(conn, activation, now)
    if activation.logs:
        logs = d.rows("l", [("level", "text"), ("message", "text"), ("at", "bigint")], 2)
        await conn.execute(
            "INSERT INTO logs (workflow_id, level, message, created_at) "
            f"SELECT $1, level, message, at FROM {logs}",
            workflow_id,
            *d.columns(
                [level for level, _, _ in activation.logs],
                [message for _, message, _ in activation.logs],
                [at or now for _, _, at in activation.logs],
            ),
        )
    if closed:
        await _close_workflow(conn, workflow_id, row[2], row[3], activation, now)
        return CommitResult(is_committed=True, epoch=epoch, last_sequence=last_sequence)
    if activation.restart is not None:
        arrived = (processed_sequence, after)
        epoch, last_sequence = await _restart(conn, workflow_id, activation.restart, arrived, now)
        return CommitResult(
            is_committed=True, needs_rerun=True, epoch=epoch, last_sequence=last_sequence
        )
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


async def complete_and_continue(
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

    The worker drove its live run with the result before asking; that is valid only if the
    history still ends where the run saw it (same last sequence and epoch) and no workflow
    task is pending or running elsewhere. Otherwise only the result is recorded, as usual.
    """
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


_FENCE = "DELETE FROM tasks WHERE task_id = $1 AND lease_owner = $2 AND attempts = $3 RETURNING 1"
_TASK_COLUMNS = [
    ("key", "text"),
    ("kind", "text"),
    ("payload", "text"),
    ("run_at", "bigint"),
    ("attempts", "bigint"),
    ("owner", "text"),
    ("expires", "bigint"),
]


async def _fence_and_insert(
    conn: Connection,
    task: ClaimedTask,
    activation: Activation,
    after: int,
    events: Sequence[NewEvent],
    eager_lease_ms: int,
    now: int,
) -> tuple[ClaimedTask, ...] | None:
    """Delete `task` under its lease (the fence), append `events` after sequence `after` and
    create the activation's tasks, activity tasks leased to `task.owner` when eager (on
    PostgreSQL in one statement). Returns the eager tasks, or None when the lease was lost
    (the caller rolls back: the inserts then vanish with the transaction)."""
    workflow_id = task.workflow_id
    expires = now + eager_lease_ms
    specs = activation.tasks
    is_eager = [bool(eager_lease_ms) and t.kind == ACTIVITY_TASK for t in specs]
    d = conn.dialect
    args = (
        task.task_id,
        task.owner,
        task.attempt,
        workflow_id,
        after,
        now,
        *d.columns([e.kind.value for e in events], [dumps(e.payload) for e in events]),
        *d.columns(
            [t.key for t in specs],
            [t.kind for t in specs],
            [dumps(t.payload) for t in specs],
            [
                expires if eager else t.run_at or now
                for t, eager in zip(specs, is_eager, strict=True)
            ],
            [1 if eager else 0 for eager in is_eager],
            [task.owner if eager else None for eager in is_eager],
            [expires if eager else None for eager in is_eager],
        ),
    )
    insert_tasks = (
        "INSERT INTO tasks (task_key, workflow_id, kind, payload, run_at, attempts, "
        "lease_owner, lease_expires_at) SELECT key, $4, kind, payload, run_at, attempts, "
        f"owner, expires FROM {conn.dialect.rows('t', _TASK_COLUMNS, 9)} WHERE true "
        "ON CONFLICT (task_key) DO NOTHING RETURNING task_id, task_key, lease_owner"
    )
    if conn.dialect.writable_ctes:
        row = await conn.fetchrow(
            f"WITH fence AS ({_FENCE}), e AS ({_insert_events(conn, 4)}), t AS ({insert_tasks}) "
            "SELECT (SELECT COUNT(*) FROM fence), "
            "ARRAY(SELECT task_id FROM t WHERE lease_owner IS NOT NULL), "
            "ARRAY(SELECT task_key FROM t WHERE lease_owner IS NOT NULL)",
            *args,
        )
        if not row[0]:
            return None
        ids = dict(zip(row[2], row[1], strict=True))
    else:
        if await conn.fetchval(_FENCE, *args) is None:
            return None
        if events:
            await conn.execute(_insert_events(conn, 4), *args)
        inserted = await conn.fetch(insert_tasks, *args) if specs else []
        ids = {r[1]: r[0] for r in inserted if r[2] is not None}
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
            f"SELECT workflow_id FROM workflows WHERE parent_id = $1 AND {_OPEN}", workflow_id
        )
        reason = {"reason": f"parent workflow {workflow_id!r} was cancelled"}
        for (child_id,) in children:
            await _append_to_open(conn, child_id, NewEvent(EventKind.CANCEL_REQUESTED, reason), now)
    if parent_id or activation.status is WorkflowStatus.CANCELED:
        # Delivered at commit: workers in other processes pick up the woken workflows.
        await conn.notify_tasks()


async def _append_to_open(conn: Connection, workflow_id: str, event: NewEvent, now: int) -> bool:
    if await _append_events(conn, workflow_id, [event], now, open_only=True) is None:
        return False
    await _ensure_workflow_task(conn, workflow_id, now)
    return True


async def complete_task(
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
    claimed.events = await load_events(conn, workflow_id, after)
    return Completion(is_recorded=True, next_task=claimed)


async def retry_activity(
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


async def append_external(
    conn: Connection, workflow_id: str, event: NewEvent, action: str, now: int
) -> None:
    """A signal or cancel request from outside: refused for a missing or closed workflow."""
    status = await conn.fetchval(
        f"SELECT status FROM workflows WHERE workflow_id = $1{conn.dialect.for_update}",
        workflow_id,
    )
    if status is None:
        raise WorkflowNotFoundError(workflow_id)
    if WorkflowStatus(status).is_closed:
        raise WorkflowClosedError(workflow_id, status, action)
    await _append_events(conn, workflow_id, [event], now)
    await _ensure_workflow_task(conn, workflow_id, now)


async def extend_leases(conn: Connection, owner: str, lease_ms: int, now: int) -> None:
    # SKIP LOCKED: a row locked now is being finished or re-leased by someone; waiting for
    # it could only add a lock cycle.
    await conn.execute(
        "UPDATE tasks SET lease_expires_at = $1, run_at = $1 WHERE task_id IN "
        f"(SELECT task_id FROM tasks WHERE lease_owner = $2{conn.dialect.skip_locked})",
        now + lease_ms,
        owner,
    )


async def release_tasks(conn: Connection, owner: str, now: int) -> None:
    await conn.execute(
        "UPDATE tasks SET lease_owner = NULL, lease_expires_at = NULL, run_at = $1 "
        "WHERE lease_owner = $2",
        now,
        owner,
    )


# -- operator views (read-only) ------------------------------------------------------------


async def collect_stats(conn: Connection, now: int) -> StoreStats:
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


async def diagnose(conn: Connection, now: int) -> Diagnosis:
    d = conn.dialect
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
    # (Events after processed_sequence that the workflow wrote itself do not count.)
    delivered = [k.value for k in EventKind if k not in COMMAND_KINDS and k not in CLOSING_KINDS]
    without_task = (
        f"FROM workflows w WHERE w.{_OPEN} "
        "AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.workflow_id = w.workflow_id)"
    )
    stuck = await conn.fetch(
        f"SELECT w.workflow_id {without_task} AND EXISTS (SELECT 1 FROM events e "
        "WHERE e.workflow_id = w.workflow_id AND e.sequence > w.processed_sequence "
        f"AND {d.any('e.kind', 1)}) ORDER BY w.created_at",
        delivered,
    )
    stuck_ids = {str(r[0]) for r in stuck}
    candidates = [
        str(r[0])
        for r in await conn.fetch(f"SELECT w.workflow_id {without_task} ORDER BY w.created_at")
        if str(r[0]) not in stuck_ids
    ]
    waits = await conn.fetch(
        "SELECT e.workflow_id, e.sequence, e.kind, e.payload, e.created_at FROM events e "
        f"WHERE {d.any('e.kind', 1)} AND e.workflow_id IN "
        f"(SELECT w.workflow_id {without_task}) ORDER BY e.workflow_id, e.sequence",
        [k.value for k in WAIT_KINDS],
    )
    idle, lost = split_idle(
        candidates, ((str(r[0]), _event(r, 1)) for r in waits if str(r[0]) not in stuck_ids)
    )
    return Diagnosis(
        backend=d.name,
        settings=await conn.settings(),
        schema_version=int(version),
        latest_schema_version=len(MIGRATIONS),
        expired_leases=[(int(r[0]), str(r[1]), str(r[2])) for r in expired],
        stuck=[str(r[0]) for r in stuck],
        idle=idle,
        lost=lost,
    )


# -- declarative workflow definitions ---------------------------------------------------------


async def register_definition(
    conn: Connection, name: str, version: str, sha256: str, document: JSON, now: int
) -> bool:
    inserted = await conn.fetchval(
        "INSERT INTO definitions (name, version, sha256, document, registered_at) "
        "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (name, version) DO NOTHING RETURNING 1",
        name,
        version,
        sha256,
        dumps(document),
        now,
    )
    if inserted is not None:
        return True
    registered = await conn.fetchval(
        "SELECT sha256 FROM definitions WHERE name = $1 AND version = $2", name, version
    )
    if registered != sha256:
        raise DefinitionConflictError(name, version, str(registered), sha256)
    return False


async def list_definitions(conn: Connection, name: str | None) -> list[DefinitionRecord]:
    rows = await conn.fetch(
        "SELECT name, version, sha256, registered_at FROM definitions "
        "WHERE CAST($1 AS TEXT) IS NULL OR name = $1 ORDER BY name, registered_at, version",
        name,
    )
    return [DefinitionRecord(r[0], r[1], r[2], int(r[3])) for r in rows]


async def get_definition(
    conn: Connection, name: str, version: str | None, sha256_prefix: str | None
) -> DefinitionRecord | None:
    row = await conn.fetchrow(
        "SELECT name, version, sha256, registered_at, document FROM definitions "
        "WHERE name = $1 AND (CAST($2 AS TEXT) IS NULL OR version = $2) "
        "AND (CAST($3 AS TEXT) IS NULL OR substr(sha256, 1, length($3)) = $3) "
        "ORDER BY registered_at DESC LIMIT 1",
        name,
        version,
        sha256_prefix,
    )
    if row is None:
        return None
    return DefinitionRecord(row[0], row[1], row[2], int(row[3]), loads(row[4]))


# -- actors --------------------------------------------------------------------------------


async def deliver_message(
    conn: Connection, spec: NewWorkflow, payload: dict[str, JSON], now: int
) -> bool:
    """Put a message in an actor's mailbox, creating the actor if absent, in one
    transaction; returns whether it created the actor. Refused for a closed actor."""
    created, refusal = await _deliver(conn, spec, payload, now)
    if refusal is not None:
        raise refusal
    return created


async def _deliver(
    conn: Connection, spec: NewWorkflow, payload: dict[str, JSON], now: int
) -> tuple[bool, Exception | None]:
    """Start-if-absent, then append the mailbox signal: (created, the error to raise)."""
    row = await conn.fetchrow(
        "SELECT status, workflow_name FROM workflows "
        f"WHERE workflow_id = $1{conn.dialect.for_update}",
        spec.workflow_id,
    )
    created = False
    if row is None:
        # Concurrent first messages: ON CONFLICT makes one insert win; both then append.
        created = await _insert_workflow(conn, spec, now)
    elif row[1] != spec.workflow_name:
        return False, WorkflowAlreadyExistsError(spec.workflow_id, row[1], spec.workflow_name)
    elif WorkflowStatus(row[0]).is_closed:
        return False, WorkflowClosedError(spec.workflow_id, row[0], "receive messages")
    event = NewEvent(EventKind.SIGNAL_RECEIVED, {"name": MAILBOX, "payload": payload})
    await _append_events(conn, spec.workflow_id, [event], now)
    await _ensure_workflow_task(conn, spec.workflow_id, now)
    return created, None


def actor_spec(actor: ActorStart) -> NewWorkflow:
    return NewWorkflow(
        workflow_id=actor.workflow_id,
        workflow_name=actor.workflow_name,
        workflow_version=actor.workflow_version,
        input=actor.input,
        state=actor.state,
        source_hash=actor.source_hash,
        total_steps=actor.total_steps,
        seed=actor.seed,
    )


async def _deliver_mail(conn: Connection, activation: Activation, now: int) -> None:
    """The messages an activation sent and the replies it answered, in its transaction,
    so a crash either loses the activation and them or keeps both (exactly once)."""
    for message in activation.messages:
        # A message to a closed actor is dropped: the sender's commit must not fail for it.
        await _deliver(conn, actor_spec(message.actor), message.payload, now)
    for reply in activation.replies:
        if reply.workflow_id is None:
            await conn.execute(
                "INSERT INTO actor_replies (reply_id, workflow_id, body, created_at) "
                "VALUES ($1, $2, $3, $4) ON CONFLICT (reply_id) DO NOTHING",
                reply.reply_id,
                str(reply.body.get("actor", "")),
                dumps(reply.body),
                now,
            )
        else:
            signal = NewEvent(
                EventKind.SIGNAL_RECEIVED, {"name": reply.signal, "payload": reply.body}
            )
            await _append_to_open(conn, reply.workflow_id, signal, now)
    await conn.notify_tasks()


_CARRIED_KINDS = (EventKind.SIGNAL_RECEIVED.value, EventKind.CANCEL_REQUESTED.value)


async def _restart(
    conn: Connection, workflow_id: str, restart: Restart, arrived: tuple[int, int], now: int
) -> tuple[int, int]:
    """Continue-as-new in the committing transaction: the old history goes, the new one is
    WORKFLOW_STARTED (the snapshot), the mailbox the run had not consumed, and what arrived
    after its cursor. Returns the new (epoch, last_sequence)."""
    rows = await conn.fetch(
        "SELECT kind, payload FROM events WHERE workflow_id = $1 AND sequence > $2 "
        "AND sequence <= $3 ORDER BY sequence",
        workflow_id,
        *arrived,
    )
    later = [NewEvent(EventKind(kind), loads(payload)) for kind, payload in rows]
    events = [
        NewEvent(EventKind.WORKFLOW_STARTED, restart.started),
        *restart.carried,
        *(event for event in later if event.kind.value in _CARRIED_KINDS),
    ]
    await conn.execute("DELETE FROM events WHERE workflow_id = $1", workflow_id)
    await conn.execute("DELETE FROM tasks WHERE workflow_id = $1", workflow_id)
    await conn.execute(
        _insert_events(conn, 1),
        workflow_id,
        0,
        now,
        *conn.dialect.columns([e.kind.value for e in events], [dumps(e.payload) for e in events]),
    )
    row = await conn.fetchrow(
        "UPDATE workflows SET last_sequence = $1, processed_sequence = 1, epoch = epoch + 1, "
        "input = $2, updated_at = $3 WHERE workflow_id = $4 RETURNING epoch",
        len(events),
        dumps(restart.started.get("input")),
        now,
        workflow_id,
    )
    await _ensure_workflow_task(conn, workflow_id, now)
    return int(row[0]), len(events)


async def take_reply(conn: Connection, reply_id: str) -> dict[str, JSON] | None:
    """The reply to an `ask`, removed as it is taken (None while it has not come)."""
    body = await conn.fetchval(
        "DELETE FROM actor_replies WHERE reply_id = $1 RETURNING body", reply_id
    )
    return None if body is None else dict(loads(body))


async def list_actors(
    conn: Connection, workflow_name: str | None, limit: int
) -> list[WorkflowRecord]:
    """Actors (the workflows named `actor:...`), of one type when `workflow_name` is given."""
    if workflow_name is not None:
        rows = await conn.fetch(
            f"SELECT {WORKFLOW_COLUMNS} FROM workflows WHERE workflow_name = $1 "
            "ORDER BY workflow_id LIMIT $2",
            workflow_name,
            limit,
        )
    else:
        rows = await conn.fetch(
            f"SELECT {WORKFLOW_COLUMNS} FROM workflows WHERE workflow_name LIKE $1 "
            "ORDER BY workflow_id LIMIT $2",
            ACTOR_PREFIX + "%",
            limit,
        )
    return [_record(row) for row in rows]
