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

import functools
from collections.abc import Sequence
from typing import Any

from loom._json import JSON, dumps, loads
from loom.activation import (
    ACTIVITY_TASK,
    ACTOR_PREFIX,
    MAILBOX,
    TIMER_TASK,
    WORKFLOW_TASK,
    Activation,
    ChildStart,
    Restart,
    TaskSpec,
    workflow_task_key,
)
from loom.breaker import Breaker, BreakerCall, BreakerResult, BreakerState, CircuitBreaker
from loom.cron import Catchup, Overlap, Schedule
from loom.dialect import POSTGRESQL, Connection, Dialect, Rollback
from loom.exceptions import (
    DefinitionConflictError,
    ScheduleNotFoundError,
    WorkflowAlreadyExistsError,
    WorkflowCancelledError,
    WorkflowClosedError,
    WorkflowNotFoundError,
)
from loom.history import (
    CLOSING_KINDS,
    COMMAND_KINDS,
    OPERATOR_SUSPENSION,
    STATE_KINDS,
    Event,
    EventKind,
    NewEvent,
    WorkflowStatus,
    encode_error,
    fold_state,
)
from loom.schema import MIGRATIONS, SCHEMA_COMPONENT
from loom.store import (
    WAIT_KINDS,
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
    StoreStats,
    TaskWorkflow,
    WorkflowRecord,
    split_idle,
    started_payload,
)

WORKFLOW_COLUMNS = (
    "workflow_id, workflow_name, workflow_version, status, input, state, error, owner, agent, "
    "parent_id, current_step, step_description, step_index, total_steps, last_sequence, "
    "processed_sequence, epoch, created_at, updated_at, state_through"
)
_OPEN = "status IN ('PENDING', 'RUNNING')"
DEFERRED_SINCE = "deferred_since"
"""Task payload key: when an open circuit breaker first deferred this call."""
DEFERRALS = "deferrals"
"""Task payload key: how often a breaker deferred this call (none of them was an attempt)."""
_NOT_CLOSED = "status IN ('PENDING', 'RUNNING', 'SUSPENDED')"
"""Open for results and requests: a suspended workflow keeps what arrives for its resume."""
_NOT_SUSPENDED = "workflow_id NOT IN (SELECT workflow_id FROM workflows WHERE status = 'SUSPENDED')"


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


async def _records(conn: Connection, rows: Sequence[Any]) -> list[WorkflowRecord]:
    """Records with their current state: the stored snapshot plus the state events written
    since (`state_through` set), so a step never rewrites the whole state."""
    records = []
    for row in rows:
        record = _record(row)
        if row[19] is not None:
            events = await conn.fetch(
                "SELECT sequence, kind, payload, created_at FROM events WHERE workflow_id = $1 "
                f"AND sequence > $2 AND {conn.dialect.any('kind', 3)} ORDER BY sequence",
                record.workflow_id,
                row[19],
                [str(kind) for kind in STATE_KINDS],
            )
            fold_state(record.state, (_event(event) for event in events))
        records.append(record)
    return records


async def get_workflow(conn: Connection, workflow_id: str) -> WorkflowRecord | None:
    row = await conn.fetchrow(
        f"SELECT {WORKFLOW_COLUMNS} FROM workflows WHERE workflow_id = $1", workflow_id
    )
    return (await _records(conn, [row]))[0] if row else None


async def get_workflows(conn: Connection, workflow_ids: list[str]) -> list[WorkflowRecord]:
    rows = await conn.fetch(
        f"SELECT {WORKFLOW_COLUMNS} FROM workflows WHERE {conn.dialect.any('workflow_id', 1)}",
        workflow_ids,
    )
    return await _records(conn, rows)


async def get_statuses(conn: Connection, workflow_ids: list[str]) -> dict[str, WorkflowStatus]:
    rows = await conn.fetch(
        f"SELECT workflow_id, status FROM workflows WHERE {conn.dialect.any('workflow_id', 1)}",
        workflow_ids,
    )
    return {row[0]: WorkflowStatus(row[1]) for row in rows}


async def closed_since(
    conn: Connection, mark: int | None, version: int | None, limit: int
) -> CloseScan:
    """The workflows closed after close number `mark`, oldest first, at most `limit`.

    No mark: only the current one (the caller waits from here). With the `version` the last
    scan returned and a change counter that has not moved, nothing can have closed in
    another process, and no row is read. The mark and the rows come from one read
    transaction, and numbers commit in order (see `Dialect.next_close`), so a close that
    commits after this read has a number above the returned mark: the next scan finds it.
    """
    d = conn.dialect
    if d.next_close is None:
        raise ValueError(f"the {d.name} store does not number closes: wait on its NOTIFY")
    now = None if d.change_counter is None else int(await conn.fetchval(d.change_counter))
    if mark is None:
        top = await conn.fetchval(
            "SELECT closed_seq FROM workflows WHERE closed_seq IS NOT NULL "
            "ORDER BY closed_seq DESC LIMIT 1"
        )
        return CloseScan(mark=int(top or 0), version=now, workflow_ids=[], is_complete=True)
    if now is not None and now == version:
        return CloseScan(mark=mark, version=now, workflow_ids=[], is_complete=True)
    rows = await conn.fetch(
        "SELECT workflow_id, closed_seq FROM workflows WHERE closed_seq > $1 "
        "ORDER BY closed_seq LIMIT $2",
        mark,
        limit,
    )
    is_complete = len(rows) < limit  # else cut: drop the counter, so the next scan reads on
    return CloseScan(
        mark=int(rows[-1][1]) if rows else mark,
        version=now if is_complete else None,
        workflow_ids=[row[0] for row in rows],
        is_complete=is_complete,
    )


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
    return await _records(conn, rows)


async def list_logs(conn: Connection, workflow_id: str) -> list[tuple[int, str, str]]:
    rows = await conn.fetch(
        "SELECT created_at, level, message FROM logs WHERE workflow_id = $1 ORDER BY log_id",
        workflow_id,
    )
    return [(int(r[0]), str(r[1]), str(r[2])) for r in rows]


async def egress_totals(conn: Connection, activity: str) -> dict[str, dict[str, JSON]]:
    """Egress journal totals of `activity`'s completed calls, per version (scans the
    completions that journaled a request; none has a body or a secret to read)."""
    rows = await conn.fetch(
        "SELECT payload FROM events WHERE kind = $1 AND payload LIKE $2",
        EventKind.ACTIVITY_COMPLETED.value,
        '%"egress":[{%',
    )
    totals: dict[str, dict[str, JSON]] = {}
    for (raw,) in rows:
        payload = loads(raw)
        pin = payload.get("pin")
        if str(payload.get("name", "")).split("@")[0] != activity or not isinstance(pin, dict):
            continue
        entries = payload["usage"]["egress"]
        total = totals.setdefault(
            str(pin.get("version")),
            {"calls": 0, "requests": 0, "bytes_out": 0, "bytes_in": 0, "duration_ms": 0.0},
        )
        total["calls"] += 1
        total["requests"] += len(entries)
        for key in ("bytes_out", "bytes_in", "duration_ms"):
            total[key] += sum(e.get(key) or 0 for e in entries)
        hosts = {f"{e.get('host')}:{e.get('port')}" for e in entries}
        total["hosts"] = sorted(hosts.union(total.get("hosts", ())))
    return totals


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


async def _insert_workflow(
    conn: Connection, spec: NewWorkflow, now: int, *, first_task: bool = True
) -> bool:
    """Insert the row, its WORKFLOW_STARTED event and (unless an eager start commits the
    first activation in this transaction) its first task; False if it exists."""
    started = started_payload(spec)
    args: tuple[object, ...] = (
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
    if not first_task:
        args = args[:15]
    if conn.dialect.writable_ctes:  # one round trip, atomic without a transaction
        task = (
            f"t AS ({_INSERT_FIRST_TASK} FROM w ON CONFLICT (task_key) DO NOTHING) "
            if first_task
            else ""
        )
        inserted = await conn.fetchval(
            f"WITH w AS ({_INSERT_WORKFLOW}), e AS ({_INSERT_STARTED} FROM w){',' * first_task} "
            f"{task}SELECT COUNT(*) FROM w",
            *args,
        )
        return bool(inserted)
    if await conn.fetchval(_INSERT_WORKFLOW, *args) is None:
        return False
    await conn.execute(_INSERT_STARTED, *args)
    if first_task:
        await conn.execute(
            f"{_INSERT_FIRST_TASK} WHERE true ON CONFLICT (task_key) DO NOTHING", *args
        )
    return True


async def create_workflow(
    conn: Connection, spec: NewWorkflow, now: int, *, first_task: bool = True
) -> tuple[WorkflowRecord, bool]:
    if not await _insert_workflow(conn, spec, now, first_task=first_task):
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


async def create_and_commit(
    conn: Connection,
    spec: NewWorkflow,
    owner: str,
    lease_ms: int,
    activation: Activation,
    seen_sequence: int,
    step: StepProgress | None,
    eager_lease_ms: int,
    now: int,
) -> tuple[WorkflowRecord, bool, CommitResult | None]:
    # The first workflow task would be inserted, leased and fenced away again in this one
    # transaction: it is never written (three statements fewer), and its commit has
    # nothing to fence, since nobody else can have seen a workflow created just now.
    record, created = await create_workflow(conn, spec, now, first_task=False)
    if not created:
        return record, False, None
    key = workflow_task_key(spec.workflow_id)
    task = ClaimedTask(_UNWRITTEN, key, WORKFLOW_TASK, spec.workflow_id, {}, 1, owner)
    task.workflow = TaskWorkflow(spec.workflow_name, 0, 0, spec.owner, spec.source_hash)
    result = await commit_workflow_task(
        conn, task, activation, seen_sequence, step, eager_lease_ms, now
    )
    if not result.is_committed:  # never expected; a workflow must never be left taskless
        await _ensure_workflow_task(conn, spec.workflow_id, now)
    return record, True, result


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
    # Tasks of a SUSPENDED workflow stay where they are (due times kept) until its resume.
    # A claim that finds another worker's lease still set (expired) finds a worker that
    # died running the task: `recoveries` counts those in a row (see the migration). Our
    # own expired lease is no death: this worker is alive, it only stalled.
    rows = await conn.fetch(
        "UPDATE tasks SET lease_owner = $1, lease_expires_at = $2, run_at = $2, "
        "attempts = attempts + 1, "
        "recoveries = recoveries + CASE WHEN lease_owner IS NULL OR lease_owner = $1 "
        "THEN 0 ELSE 1 END "
        "WHERE task_id IN "
        f"(SELECT task_id FROM tasks WHERE run_at <= $3 {skip}AND {_NOT_SUSPENDED} "
        f"ORDER BY run_at LIMIT $4{conn.dialect.skip_locked}) "
        "RETURNING task_id, task_key, kind, workflow_id, payload, attempts, recoveries",
        owner,
        now + lease_ms,
        now,
        limit,
        *([list(avoid)] if avoid else []),
    )
    claimed = [
        ClaimedTask(
            task_id, key, kind, workflow_id, loads(payload), attempts, owner, recoveries=recoveries
        )
        for task_id, key, kind, workflow_id, payload, attempts, recoveries in rows
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
        cursors = d.rows("c", (("workflow_id", "text"), ("after", "bigint")), 1)
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
    guard = f" AND {_NOT_CLOSED}" if open_only else ""
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
        _insert_events(conn.dialect, 1),
        workflow_id,
        int(row[0]) - len(events),
        now,
        *conn.dialect.columns([e.kind.value for e in events], [dumps(e.payload) for e in events]),
    )
    return TaskWorkflow(row[1], row[2], row[3], row[4], row[5])


@functools.cache
def _insert_events(dialect: Dialect, first: int) -> str:
    """Events of workflow `$first`, numbered after sequence `$first+1`, created at
    `$first+2`, from arrays of kinds and payloads in `$first+3` and `$first+4`."""
    events = dialect.rows("e", (("kind", "text"), ("payload", "text")), first + 3, ordinality="n")
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
    committed = await _commit_activation(
        conn, task, activation, (), seen_sequence, step, eager_lease_ms, now, epoch=epoch
    )
    if committed is None:
        await conn.execute(
            "UPDATE tasks SET lease_owner = NULL, lease_expires_at = NULL, run_at = $1 "
            "WHERE task_id = $2 AND lease_owner = $3 AND attempts = $4",
            now,
            task.task_id,
            task.owner,
            task.attempt,
        )
        return CommitResult(is_committed=False)
    return committed


_OPEN_GUARD = (
    f" AND last_sequence = $13 AND epoch = $14 AND {_OPEN} "
    "AND NOT EXISTS (SELECT 1 FROM tasks WHERE task_key = $15)"
)


@functools.lru_cache(maxsize=8)
def _numbering(dialect: Dialect, template: str) -> str:
    """`closed_seq = ...,` for an UPDATE that may close a workflow, with the dialect's next
    close number put into `template`; nothing where closes are not numbered."""
    if dialect.next_close is None:
        return ""
    return f"closed_seq = {template.format(dialect.next_close)}, "


def _update_workflow(
    dialect: Dialect,
    task: ClaimedTask,
    activation: Activation,
    leading: int,
    processed_sequence: int,
    step: StepProgress | None,
    now: int,
    expected: tuple[int, int] | None = None,
    epoch: int | None = None,
) -> tuple[str, tuple[object, ...]]:
    """The UPDATE writing the activation's row, which locks it first (see lock order), and
    its arguments; it returns (last_sequence, epoch, parent_id, parent_seq).

    With `expected`, only if the history still ends at (last sequence, epoch) and no workflow
    task exists; no row otherwise. Whoever creates a workflow task also bumps last_sequence
    or epoch in that transaction, so the re-checked row catches one committed while we waited.
    """
    guard = " AND status <> 'SUSPENDED'" if expected is None else _OPEN_GUARD
    extra: tuple[object, ...] = ()
    if expected is not None:
        extra = (*expected, workflow_task_key(task.workflow_id))
    elif epoch is not None:
        guard, extra = f"{guard} AND epoch = $13", (epoch,)
    numbering = _numbering(dialect, "CASE WHEN $2 = 'RUNNING' THEN closed_seq ELSE {} END")
    sql = (
        f"UPDATE workflows SET {numbering}last_sequence = last_sequence + $1, status = $2, "
        # No state given: the stored one stays, and readers fold the state events after it.
        "state = COALESCE($3, state), state_through = CASE WHEN $3 IS NOT NULL THEN NULL "
        "WHEN $12 THEN COALESCE(state_through, last_sequence) ELSE state_through END, "
        "error = $4, step_index = $5, current_step = COALESCE($6, current_step), "
        "step_description = COALESCE($7, step_description), processed_sequence = $8, "
        "epoch = epoch + 1, updated_at = $9, source_hash = COALESCE($11, source_hash) "
        f"WHERE workflow_id = $10{guard} "
        "RETURNING last_sequence, epoch, parent_id, parent_seq"
    )
    args = (
        leading + len(activation.events),
        activation.status.value,
        None if activation.state is None else dumps(activation.state),
        dumps(activation.error) if activation.error else None,
        activation.step_index,
        step.name if step else None,
        step.description if step else None,
        processed_sequence,
        now,
        task.workflow_id,
        activation.source_hash,
        any(event.kind in STATE_KINDS for event in activation.events),
        *extra,
    )
    return sql, args


async def _commit_activation(
    conn: Connection,
    task: ClaimedTask,
    activation: Activation,
    leading: Sequence[NewEvent],
    processed_sequence: int,
    step: StepProgress | None,
    eager_lease_ms: int,
    now: int,
    *,
    expected: tuple[int, int] | None = None,
    epoch: int | None = None,
) -> CommitResult | None:
    """Write the activation's row (guarded as `_update_workflow` says), fence `task`, append
    `leading` and the activation's events and apply its effects; None when the guard refused
    (nothing written). On PostgreSQL the row, the fence, the events and the new tasks are one
    statement: the hot path of every workflow step, one round trip instead of two."""
    events = [*leading, *activation.events]
    closed = activation.status is not WorkflowStatus.RUNNING
    lease_ms = 0 if closed else eager_lease_ms
    update, args = _update_workflow(
        conn.dialect, task, activation, len(leading), processed_sequence, step, now, expected, epoch
    )
    eager: tuple[ClaimedTask, ...] | None
    # A close in the statement deletes the workflow's tasks (`c`). That sees the statement's
    # snapshot, taken before the row lock was granted; a guard on the epoch or last sequence
    # refuses the commit if anyone wrote the workflow (and so its tasks) meanwhile.
    closing = closed and (expected is not None or epoch is not None)
    if conn.dialect.writable_ctes:
        specs: Sequence[TaskSpec] = () if closing else activation.tasks
        first = len(args) + 1  # the fence's task, its events and new tasks: parameters after
        row = await conn.fetchrow(
            _update_and_fence(update, first, closing=closing, fenced=task.task_id != _UNWRITTEN),
            *args,
            task.task_id,
            task.owner,
            task.attempt,
            *conn.dialect.columns(
                [e.kind.value for e in events], [dumps(e.payload) for e in events]
            ),
            *_task_columns(conn.dialect, task, specs, lease_ms, now),
        )
        if row is None:
            return None
        eager = (
            None
            if not row[4]
            else _eager_tasks(task, specs, dict(zip(row[6], row[5], strict=True)))
        )
    else:
        row = await conn.fetchrow(update, *args)
        if row is None:
            return None
        after = int(row[0]) - len(events)
        eager = await _fence_and_insert(conn, task, activation, after, events, lease_ms, now)
    if eager is None:
        # Lost to a re-claim: roll back the row update; complete_and_continue (which brings
        # the activity result as `leading`) recorded nothing either.
        raise Rollback(CommitResult(is_committed=False, is_recorded=not leading))
    has_tasks = not (closing and conn.dialect.writable_ctes)
    return await _apply_activation(
        conn, task, activation, row, eager, len(events), processed_sequence, now, has_tasks
    )


@functools.cache
def _update_and_fence(update: str, first: int, *, closing: bool, fenced: bool) -> str:
    """PostgreSQL: `update`, then (only if it wrote the row) the fence on the task in
    `$first`..`$first+2`, the events in `$first+3`, `$first+4` numbered after the row's
    previous last sequence, and the tasks from `$first+5` on; with `closing`, every other task
    of the workflow deleted. No row when the update's guard refused; else the update's
    columns, the fence's count and the eager tasks' ids and keys."""
    written = "EXISTS (SELECT 1 FROM u)"
    events = POSTGRESQL.rows(
        "e", (("kind", "text"), ("payload", "text")), first + 3, ordinality="n"
    )
    fence = (
        f"DELETE FROM tasks WHERE task_id = ${first} AND lease_owner = ${first + 1} "
        f"AND attempts = ${first + 2} AND {written} RETURNING 1"
        if fenced
        # An unwritten task (see _UNWRITTEN): one row if the update wrote, with the types
        # PostgreSQL needs for the parameters it would have fenced on.
        else f"SELECT ${first}::bigint, ${first + 1}::text, ${first + 2}::bigint FROM u"
    )
    close = (
        f", c AS (DELETE FROM tasks WHERE workflow_id = $10 AND task_id <> ${first} AND {written})"
    )
    return (
        f"WITH u AS ({update}), fence AS ({fence}), "
        "e AS (INSERT INTO events (workflow_id, sequence, kind, payload, created_at) "
        f"SELECT $10, u.last_sequence - $1 + n, kind, payload, $9 FROM u, {events}), "
        f"t AS ({_insert_tasks(POSTGRESQL, 10, first + 5, written)}){close if closing else ''} "
        "SELECT u.last_sequence, u.epoch, u.parent_id, u.parent_seq, "
        "(SELECT COUNT(*) FROM fence), "
        "ARRAY(SELECT task_id FROM t WHERE lease_owner IS NOT NULL), "
        "ARRAY(SELECT task_key FROM t WHERE lease_owner IS NOT NULL) FROM u"
    )


async def _apply_activation(
    conn: Connection,
    task: ClaimedTask,
    activation: Activation,
    row: Any,
    eager: tuple[ClaimedTask, ...],
    appended: int,
    processed_sequence: int,
    now: int,
    has_tasks: bool,
) -> CommitResult:
    """The activation's effects, once its row, events and tasks are written (`appended`
    events, ending at the row's last sequence); `has_tasks`: a close must delete them."""
    workflow_id = task.workflow_id
    last_sequence, epoch = int(row[0]), int(row[1])
    closed = activation.status is not WorkflowStatus.RUNNING
    after = last_sequence - appended
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
        logs = d.rows("l", (("level", "text"), ("message", "text"), ("at", "bigint")), 2)
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
        await _close_workflow(
            conn, workflow_id, row[2], row[3], activation, now, has_tasks=has_tasks
        )
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
    breaker: BreakerResult | None = None,
) -> CommitResult:
    """Record an activity result and the activation it led to, if nothing else happened.

    The worker drove its live run with the result before asking; that is valid only if the
    history still ends where the run saw it (same last sequence and epoch) and no workflow
    task is pending or running elsewhere. Otherwise only the result is recorded, as usual.
    """
    processed = expected[0] + 1
    committed = await _commit_activation(
        conn, task, activation, [result], processed, step, eager_lease_ms, now, expected=expected
    )
    if committed is not None:
        await _record_breaker(conn, breaker, now)
        return committed
    # The history moved on (or another run holds the workflow task): record the result only.
    workflow = await _append_events(conn, task.workflow_id, [result], now, open_only=True)
    if not await _delete_leased(conn, task):
        raise Rollback(CommitResult(is_committed=False, is_recorded=False))
    await _record_breaker(conn, breaker, now)
    if workflow is not None:
        await _ensure_workflow_task(conn, task.workflow_id, now)
    return CommitResult(is_committed=False)


_FENCE = "DELETE FROM tasks WHERE task_id = $1 AND lease_owner = $2 AND attempts = $3 RETURNING 1"
_UNWRITTEN = 0
"""The id of a workflow task committed in the transaction that created its workflow (an
eager start): it was never written, so there is no lease to fence (ids start at 1)."""
_TASK_COLUMNS = (
    ("key", "text"),
    ("kind", "text"),
    ("payload", "text"),
    ("run_at", "bigint"),
    ("attempts", "bigint"),
    ("owner", "text"),
    ("expires", "bigint"),
)


async def _fence_and_insert(
    conn: Connection,
    task: ClaimedTask,
    activation: Activation,
    after: int,
    events: Sequence[NewEvent],
    eager_lease_ms: int,
    now: int,
) -> tuple[ClaimedTask, ...] | None:
    """SQLite's half of `_commit_activation`: delete `task` under its lease (the fence),
    append `events` after sequence `after` and create the activation's tasks, activity tasks
    leased to `task.owner` when eager. Returns the eager tasks, or None when the lease was
    lost (the caller rolls back: the inserts then vanish with the transaction)."""
    specs = activation.tasks
    d = conn.dialect
    args = (
        task.task_id,
        task.owner,
        task.attempt,
        task.workflow_id,
        after,
        now,
        *d.columns([e.kind.value for e in events], [dumps(e.payload) for e in events]),
        *_task_columns(d, task, specs, eager_lease_ms, now),
    )
    if task.task_id != _UNWRITTEN and await conn.fetchval(_FENCE, *args) is None:
        return None
    if events:
        await conn.execute(_insert_events(d, 4), *args)
    inserted = await conn.fetch(_insert_tasks(d, 4, 9, "true"), *args) if specs else []
    return _eager_tasks(task, specs, {r[1]: r[0] for r in inserted if r[2] is not None})


def _task_columns(
    d: Dialect, task: ClaimedTask, specs: Sequence[TaskSpec], eager_lease_ms: int, now: int
) -> tuple[Any, ...]:
    """The parameters of `_insert_tasks`: activity tasks leased to `task.owner` when eager."""
    expires = now + eager_lease_ms
    is_eager = [bool(eager_lease_ms) and t.kind == ACTIVITY_TASK for t in specs]
    return d.columns(
        [t.key for t in specs],
        [t.kind for t in specs],
        [dumps(t.payload) for t in specs],
        [expires if eager else t.run_at or now for t, eager in zip(specs, is_eager, strict=True)],
        [1 if eager else 0 for eager in is_eager],
        [task.owner if eager else None for eager in is_eager],
        [expires if eager else None for eager in is_eager],
    )


@functools.cache
def _insert_tasks(d: Dialect, workflow: int, first: int, condition: str) -> str:
    """Insert the tasks of `_task_columns` (from `$first`) for the workflow `$workflow`,
    where `condition` holds; returns each new task's id, key and lease owner."""
    return (
        "INSERT INTO tasks (task_key, workflow_id, kind, payload, run_at, attempts, "
        f"lease_owner, lease_expires_at) SELECT key, ${workflow}, kind, payload, run_at, "
        f"attempts, owner, expires FROM {d.rows('t', _TASK_COLUMNS, first)} WHERE {condition} "
        "ON CONFLICT (task_key) DO NOTHING RETURNING task_id, task_key, lease_owner"
    )


def _eager_tasks(
    task: ClaimedTask, specs: Sequence[TaskSpec], ids: dict[str, int]
) -> tuple[ClaimedTask, ...]:
    """The created tasks leased to `task.owner`, from their ids by key."""
    return tuple(
        ClaimedTask(ids[t.key], t.key, t.kind, task.workflow_id, t.payload, 1, task.owner)
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
            trace=child.trace,
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
    *,
    has_tasks: bool = True,
) -> None:
    """`has_tasks`: False when the commit's own statement already deleted them."""
    if has_tasks:
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
            f"SELECT workflow_id, status FROM workflows WHERE parent_id = $1 AND {_NOT_CLOSED}",
            workflow_id,
        )
        reason = {"reason": f"parent workflow {workflow_id!r} was cancelled"}
        for child_id, status in children:
            request = NewEvent(EventKind.CANCEL_REQUESTED, reason)
            if status == WorkflowStatus.SUSPENDED:
                await _cancel_suspended(conn, child_id, request, now)
            else:
                await _append_to_open(conn, child_id, request, now)
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
    breaker: BreakerResult | None = None,
) -> Completion:
    """Record an activity outcome or timer firing exactly once (the task row is the guard)."""
    workflow_id = task.workflow_id
    workflow = await _append_events(conn, workflow_id, [event], now, open_only=True)
    if not await _delete_leased(conn, task):  # after the workflow row: lock order
        raise Rollback(Completion(is_recorded=False))
    await _record_breaker(conn, breaker, now)
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
    breaker: BreakerResult | None = None,
) -> bool:
    released = await conn.fetchval(
        "UPDATE tasks SET lease_owner = NULL, lease_expires_at = NULL, run_at = $1, payload = $2, "
        "recoveries = 0 WHERE task_id = $3 AND lease_owner = $4 AND attempts = $5 RETURNING 1",
        run_at,
        dumps(payload),
        task.task_id,
        task.owner,
        task.attempt,
    )
    if released is None:
        return False
    await _record_breaker(conn, breaker, now)
    await conn.execute(
        "INSERT INTO logs (workflow_id, level, message, created_at) VALUES ($1, 'WARNING', $2, $3)",
        task.workflow_id,
        error,
        now,
    )
    return True


async def append_external(
    conn: Connection, workflow_id: str, event: NewEvent, action: str, now: int
) -> bool:
    """A signal or cancel request from outside: refused for a missing or closed workflow.
    True when it closed the workflow (a cancel of a SUSPENDED one)."""
    status = await conn.fetchval(
        f"SELECT status FROM workflows WHERE workflow_id = $1{conn.dialect.for_update}",
        workflow_id,
    )
    if status is None:
        raise WorkflowNotFoundError(workflow_id)
    if WorkflowStatus(status).is_closed:
        raise WorkflowClosedError(workflow_id, status, action)
    if status == WorkflowStatus.SUSPENDED and event.kind is EventKind.CANCEL_REQUESTED:
        await _cancel_suspended(conn, workflow_id, event, now)
        return True
    await _append_events(conn, workflow_id, [event], now)
    await _ensure_workflow_task(conn, workflow_id, now)
    return False


async def _cancel_suspended(conn: Connection, workflow_id: str, event: NewEvent, now: int) -> None:
    """Cancel a SUSPENDED workflow at once, without running its code: that code may be
    what is broken (a replay that diverges), and a cancel must not wait for a fix."""
    reason = event.payload.get("reason")
    error = encode_error(WorkflowCancelledError(None if reason is None else str(reason)))
    closing = NewEvent(EventKind.WORKFLOW_CANCELED, {"error": error})
    await _append_events(conn, workflow_id, [event, closing], now)
    row = await conn.fetchrow(
        f"UPDATE workflows SET {_numbering(conn.dialect, '{}')}status = 'CANCELED', error = $1, "
        "epoch = epoch + 1 "
        "WHERE workflow_id = $2 RETURNING parent_id, parent_seq, state",
        dumps(error),
        workflow_id,
    )
    activation = Activation(status=WorkflowStatus.CANCELED, state=loads(row[2]), error=error)
    await _close_workflow(conn, workflow_id, row[0], row[1], activation, now)


async def release_claims(conn: Connection, tasks: Sequence[ClaimedTask], now: int) -> None:
    """Give back claims not started, due again at once, crash counts kept."""
    for task in tasks:
        await conn.execute(
            "UPDATE tasks SET lease_owner = NULL, lease_expires_at = NULL, run_at = $1 "
            "WHERE task_id = $2 AND lease_owner = $3 AND attempts = $4",
            now,
            task.task_id,
            task.owner,
            task.attempt,
        )


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


# -- suspend, resume, fork -----------------------------------------------------------------


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
        released = await conn.fetchval(
            "UPDATE tasks SET lease_owner = NULL, lease_expires_at = NULL, run_at = $1 "
            "WHERE task_id = $2 AND lease_owner = $3 AND attempts = $4 RETURNING 1",
            now,
            task.task_id,
            task.owner,
            task.attempt,
        )
        if released is None:
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


async def llm_token_totals(conn: Connection) -> dict[str, dict[str, int]]:
    """Tokens of every recorded model call (`llm_usage` of ACTIVITY_COMPLETED), per model.

    Reads the whole history (no counter table yet), so it is for a metrics scrape, not a
    hot path; a LIKE prefilter spares the JSON parse of the events without usage."""
    d = conn.dialect
    model = d.json_text("payload", "llm_usage", "model")
    sums = ", ".join(
        f"COALESCE(SUM(CAST({d.json_text('payload', 'llm_usage', kind)} AS BIGINT)), 0)"
        for kind in ("prompt_tokens", "completion_tokens")
    )
    rows = await conn.fetch(
        f"SELECT {model}, {sums} FROM events WHERE kind = $1 AND payload LIKE $2 "
        f"AND {model} IS NOT NULL GROUP BY {model} ORDER BY {model}",
        EventKind.ACTIVITY_COMPLETED.value,
        '%"llm_usage"%',
    )
    return {str(m): {"prompt": int(p), "completion": int(c)} for m, p, c in rows}


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
    suspended_count = await conn.fetchval(
        "SELECT COUNT(*) FROM workflows WHERE status = 'SUSPENDED'"
    )
    suspended = await conn.fetch(
        "SELECT workflow_id FROM workflows WHERE status = 'SUSPENDED' ORDER BY updated_at LIMIT 20"
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
        suspended=int(suspended_count),
        suspended_ids=[str(r[0]) for r in suspended],
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


# -- circuit breakers ----------------------------------------------------------------------

_BREAKER_COLUMNS = (
    "activity_name, state, failure_times, opened_at, probe_key, probe_until, times_opened, "
    "failures, window_ms, reset_after_ms, updated_at"
)


_BREAKER_UPDATE = (
    "failure_times = excluded.failure_times, opened_at = excluded.opened_at, "
    "probe_key = excluded.probe_key, probe_until = excluded.probe_until, "
    "times_opened = excluded.times_opened, failures = excluded.failures, "
    "window_ms = excluded.window_ms, reset_after_ms = excluded.reset_after_ms, "
    "updated_at = excluded.updated_at"
)


def _breaker(row: Any) -> Breaker:
    return Breaker(
        activity_name=row[0],
        state=BreakerState(row[1]),
        failure_times=tuple(int(t) for t in loads(row[2])),
        opened_at=row[3],
        probe_key=row[4],
        probe_until=row[5],
        times_opened=int(row[6]),
        policy=CircuitBreaker.from_ms(int(row[7]), int(row[8]), int(row[9])),
        updated_at=int(row[10]),
    )


async def _lock_breaker(conn: Connection, name: str) -> Breaker | None:
    row = await conn.fetchrow(
        f"SELECT {_BREAKER_COLUMNS} FROM circuit_breakers WHERE activity_name = $1"
        f"{conn.dialect.for_update}",
        name,
    )
    return _breaker(row) if row else None


async def _save_breaker(
    conn: Connection,
    breaker: Breaker,
    policy: CircuitBreaker,
    now: int,
    *,
    if_missing: bool = False,
) -> None:
    on_conflict = "DO NOTHING" if if_missing else "DO UPDATE SET state = excluded.state, "
    await conn.execute(
        f"INSERT INTO circuit_breakers ({_BREAKER_COLUMNS}) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) "
        f"ON CONFLICT (activity_name) {on_conflict}" + ("" if if_missing else _BREAKER_UPDATE),
        breaker.activity_name,
        breaker.state.value,
        dumps(list(breaker.failure_times)),
        breaker.opened_at,
        breaker.probe_key,
        breaker.probe_until,
        breaker.times_opened,
        policy.failures,
        policy.window_ms,
        policy.reset_after_ms,
        now,
    )


async def _record_breaker(conn: Connection, result: BreakerResult | None, now: int) -> None:
    """Apply an attempt's outcome to its breaker; callers run it after their fence held, in
    the transaction that records the attempt (lock order: workflow, task, then breaker)."""
    if result is None:
        return
    if not result.is_success:
        # Create the row first: FOR UPDATE locks no missing row, so two first failures
        # committing together on PostgreSQL would each count alone and one would be lost.
        await _save_breaker(
            conn, Breaker(result.activity_name), result.policy, now, if_missing=True
        )
    current = await _lock_breaker(conn, result.activity_name)
    if current is None:
        return  # a success, and a closed breaker that never failed needs no row
    after = current.recorded(result, now)
    if after != current or current.policy != result.policy:
        await _save_breaker(conn, after, result.policy, now)
    if current.state is not BreakerState.CLOSED and after.state is BreakerState.CLOSED:
        await _wake_deferred(conn, result.activity_name, now)


def _deferrals(task: ClaimedTask) -> int:
    count = task.payload.get(DEFERRALS)
    return count if isinstance(count, int) else 0


async def _wake_deferred(conn: Connection, name: str, now: int) -> None:
    """A breaker closed: the calls it deferred run now, not when they would have asked again.
    (Matched on the payload text: a similar name only makes some other task due early.)"""
    await conn.execute(
        "UPDATE tasks SET run_at = $1 WHERE kind = $2 AND lease_owner IS NULL AND run_at > $1 "
        "AND payload LIKE $3 AND (payload LIKE $4 OR payload LIKE $5)",
        now,
        ACTIVITY_TASK,
        f'%"{DEFERRED_SINCE}":%',
        f'%"name":{dumps(name)}%',
        f'%"name":{dumps(name)[:-1]}@%',
    )
    await conn.notify_tasks()


async def is_breaker_closed(conn: Connection, name: str) -> bool:
    """The admission's fast path, a read: most attempts meet a closed (or absent) breaker."""
    state = await conn.fetchval("SELECT state FROM circuit_breakers WHERE activity_name = $1", name)
    return state is None or state == BreakerState.CLOSED.value


async def admit_attempt(
    conn: Connection, task: ClaimedTask, call: BreakerCall, now: int
) -> Admission:
    """May this attempt run? If its breaker is open (or another attempt probes), the task is
    released until the breaker should be asked again, with its claim uncounted: a deferred
    attempt consumes no retry. Past the call's deadline it is refused instead."""
    locked = await conn.fetchval(
        f"SELECT attempts FROM tasks WHERE task_id = $1 AND lease_owner = $2 AND attempts = $3"
        f"{conn.dialect.for_update}",
        task.task_id,
        task.owner,
        task.attempt,
    )
    if locked is None:
        return Admission(is_admitted=False, is_held=False)  # lease lost: someone else runs it
    current = await _lock_breaker(conn, call.activity_name)
    if current is None:
        return Admission(is_admitted=True)
    after, retry_at = current.admitted(call, task.task_key, now)
    if after != current:
        await _save_breaker(conn, after, call.policy, now)
    if retry_at is None:
        return Admission(is_admitted=True)
    since = task.payload.get(DEFERRED_SINCE)
    since = since if isinstance(since, int) else now
    if call.timeout_ms is not None and retry_at > since + call.timeout_ms:
        return Admission(is_admitted=False, is_expired=True, waited_ms=now - since)
    await conn.execute(
        "UPDATE tasks SET lease_owner = NULL, lease_expires_at = NULL, run_at = $1, "
        "attempts = attempts - 1, payload = $2 WHERE task_id = $3",
        retry_at,
        dumps({**task.payload, DEFERRED_SINCE: since, DEFERRALS: _deferrals(task) + 1}),
        task.task_id,
    )
    if not _deferrals(task):  # once per call: `loom logs` says why it waits
        await conn.execute(
            "INSERT INTO logs (workflow_id, level, message, created_at) "
            "VALUES ($1, 'WARNING', $2, $3)",
            task.workflow_id,
            f"activity {call.activity_name!r} deferred: its circuit breaker is {after.state} "
            f"(it fails downstream); the call waits without spending an attempt",
            now,
        )
    return Admission(is_admitted=False, retry_at=retry_at, state=after.state)


async def list_breakers(conn: Connection) -> list[Breaker]:
    rows = await conn.fetch(
        f"SELECT {_BREAKER_COLUMNS} FROM circuit_breakers ORDER BY activity_name"
    )
    return [_breaker(row) for row in rows]


async def reset_breaker(conn: Connection, name: str, now: int) -> bool:
    """Close a breaker by hand; its deferred attempts become due at once."""
    reset = await conn.fetchval(
        "UPDATE circuit_breakers SET state = $1, failure_times = '[]', opened_at = NULL, "
        "probe_key = NULL, probe_until = NULL, updated_at = $2 WHERE activity_name = $3 "
        "RETURNING 1",
        BreakerState.CLOSED.value,
        now,
        name,
    )
    if reset is None:
        return False
    await _wake_deferred(conn, name, now)
    return True


# -- schedules -----------------------------------------------------------------------------

_SCHEDULE_COLUMNS = (
    "name, cron, timezone, workflow_name, app, input, overlap, catchup, is_paused, "
    "next_fire_at, last_fired_at, last_workflow_id, fired_count, skipped_count, created_at, "
    "updated_at"
)


def _schedule(row: Any) -> Schedule:
    return Schedule(
        name=row[0],
        cron=row[1],
        timezone=row[2],
        workflow_name=row[3],
        app=row[4],
        input=loads(row[5]),
        overlap=Overlap(row[6]),
        catchup=Catchup(row[7]),
        is_paused=bool(row[8]),
        next_fire_at=int(row[9]),
        last_fired_at=row[10],
        last_workflow_id=row[11],
        fired_count=int(row[12]),
        skipped_count=int(row[13]),
        created_at=int(row[14]),
        updated_at=int(row[15]),
    )


async def put_schedule(conn: Connection, schedule: Schedule, now: int) -> Schedule:
    """Create or replace a schedule by name; a replaced one keeps its counters and last run."""
    await conn.execute(
        f"INSERT INTO schedules ({_SCHEDULE_COLUMNS}) VALUES "
        "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, NULL, NULL, 0, 0, $11, $11) "
        "ON CONFLICT (name) DO UPDATE SET cron = excluded.cron, timezone = excluded.timezone, "
        "workflow_name = excluded.workflow_name, app = excluded.app, input = excluded.input, "
        "overlap = excluded.overlap, catchup = excluded.catchup, "
        "is_paused = excluded.is_paused, next_fire_at = excluded.next_fire_at, "
        "updated_at = excluded.updated_at",
        schedule.name,
        schedule.cron,
        schedule.timezone,
        schedule.workflow_name,
        schedule.app,
        dumps(schedule.input),
        schedule.overlap.value,
        schedule.catchup.value,
        int(schedule.is_paused),
        schedule.next_fire_at,
        now,
    )
    stored = await get_schedule(conn, schedule.name)
    assert stored is not None
    return stored


async def get_schedule(conn: Connection, name: str) -> Schedule | None:
    row = await conn.fetchrow(f"SELECT {_SCHEDULE_COLUMNS} FROM schedules WHERE name = $1", name)
    return _schedule(row) if row else None


async def list_schedules(conn: Connection) -> list[Schedule]:
    rows = await conn.fetch(f"SELECT {_SCHEDULE_COLUMNS} FROM schedules ORDER BY name")
    return [_schedule(row) for row in rows]


async def due_schedules(
    conn: Connection, workflow_names: list[str], now: int, limit: int
) -> list[Schedule]:
    rows = await conn.fetch(
        f"SELECT {_SCHEDULE_COLUMNS} FROM schedules WHERE next_fire_at <= $1 AND is_paused = 0 "
        f"AND {conn.dialect.any('workflow_name', 2)} ORDER BY next_fire_at LIMIT $3",
        now,
        workflow_names,
        limit,
    )
    return [_schedule(row) for row in rows]


async def set_schedule_paused(
    conn: Connection, name: str, is_paused: bool, next_fire_at: int | None, now: int
) -> Schedule:
    """Pause, or resume from `next_fire_at` (ticks missed while paused follow `catchup`)."""
    row = await conn.fetchrow(
        "UPDATE schedules SET is_paused = $1, next_fire_at = COALESCE($2, next_fire_at), "
        f"updated_at = $3 WHERE name = $4 RETURNING {_SCHEDULE_COLUMNS}",
        int(is_paused),
        next_fire_at,
        now,
        name,
    )
    if row is None:
        raise ScheduleNotFoundError(name)
    return _schedule(row)


async def delete_schedule(conn: Connection, name: str) -> None:
    if await conn.fetchval("DELETE FROM schedules WHERE name = $1 RETURNING 1", name) is None:
        raise ScheduleNotFoundError(name)


async def fire_schedule(
    conn: Connection,
    name: str,
    expected_next: int,
    next_fire_at: int,
    starts: list[NewWorkflow],
    skipped: int,
    now: int,
) -> list[str]:
    """Start the workflows of one pass over a due schedule and move it to its next tick.

    Compare-and-set on `next_fire_at`: of several workers firing the same tick, one finds
    the row still at `expected_next` and starts; the others start nothing. The ids derive
    from schedule + tick, so even a start repeated after a crash creates nothing twice.
    With `overlap=skip`, a tick whose predecessor is still open is skipped (and counted).
    Returns the ids of the workflows started.
    """
    row = await conn.fetchrow(
        "SELECT next_fire_at, is_paused, overlap, last_workflow_id FROM schedules "
        f"WHERE name = $1{conn.dialect.for_update}",
        name,
    )
    if row is None or int(row[0]) != expected_next or row[1]:
        return []
    last = row[3]
    started: list[str] = []
    for spec in starts:
        if row[2] == Overlap.SKIP.value and last is not None:
            status = await conn.fetchval(
                "SELECT status FROM workflows WHERE workflow_id = $1", last
            )
            if status is not None and not WorkflowStatus(status).is_closed:
                skipped += 1
                continue
        if await _insert_workflow(conn, spec, now):
            started.append(spec.workflow_id)
        last = spec.workflow_id
    await conn.execute(
        "UPDATE schedules SET next_fire_at = $1, last_fired_at = CASE WHEN $2 > 0 THEN $3 "
        "ELSE last_fired_at END, last_workflow_id = $4, fired_count = fired_count + $2, "
        "skipped_count = skipped_count + $5, updated_at = $3 WHERE name = $6",
        next_fire_at,
        len(started),
        now,
        last,
        skipped,
        name,
    )
    if started:
        await conn.notify_tasks()
    return started


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


async def _deliver_mail(conn: Connection, activation: Activation, now: int) -> None:
    """The messages an activation sent and the replies it answered, in its transaction,
    so a crash either loses the activation and them or keeps both (exactly once)."""
    for message in activation.messages:
        # A message to a closed actor is dropped: the sender's commit must not fail for it.
        await _deliver(conn, message.actor, message.payload, now)
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
        _insert_events(conn.dialect, 1),
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
