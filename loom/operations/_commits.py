"""The hot path: committing a workflow task's activation, completing tasks under their
fence, starting children, closing workflows, and external signals and cancels."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from loom._json import JSON, dumps, loads
from loom.activation import (
    ACTIVITY_TASK,
    WORKFLOW_TASK,
    Activation,
    ChildStart,
    TaskSpec,
    workflow_task_key,
)
from loom.breaker import BreakerResult
from loom.dialect import POSTGRESQL, Connection, Dialect, Rollback
from loom.exceptions import WorkflowCancelledError, WorkflowClosedError, WorkflowNotFoundError
from loom.history import STATE_KINDS, EventKind, NewEvent, WorkflowStatus, encode_error
from loom.operations._actors import _deliver_mail, _restart
from loom.operations._breakers import _record_breaker
from loom.operations._claims import release_claims
from loom.operations._reads import load_events
from loom.operations._rows import _NOT_CLOSED, _OPEN
from loom.operations._workflows import (
    _append_events,
    _append_to_open,
    _ensure_workflow_task,
    _insert_events,
    _insert_workflow,
    create_workflow,
)
from loom.store import (
    ClaimedTask,
    CommitResult,
    Completion,
    CursorLookup,
    NewWorkflow,
    StepProgress,
    TaskWorkflow,
    WorkflowRecord,
)


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


_FENCE = "DELETE FROM tasks WHERE task_id = $1 AND lease_owner = $2 AND attempts = $3"


async def _delete_leased(conn: Connection, task: ClaimedTask) -> bool:
    """Delete the task if this claim still holds it: the fence and the exactly-once guard.

    (owner, attempts) identifies one claim: a re-claim after expiry bumps attempts, so a
    reclaimed task matches no row. Callers lock the workflow row first (lock order) and raise
    Rollback when this returns False, undoing what they wrote before it.
    """
    return await conn.execute(_FENCE, task.task_id, task.owner, task.attempt) == 1


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
        await release_claims(conn, [task], now)
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
    extra: tuple[object, ...] = ()
    if expected is not None:
        extra = (*expected, workflow_task_key(task.workflow_id))
    elif epoch is not None:
        extra = (epoch,)
    sql = _update_sql(dialect, expected is not None, epoch is not None)
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


@functools.cache
def _update_sql(dialect: Dialect, expected: bool, epoch: bool, running: bool = False) -> str:
    """`_update_workflow`'s statement, built once per guard: every workflow step runs it,
    and a new 700-character text per call was hashed again by every cache it met.

    `running`: only for a row already RUNNING, whose status and close number stay, and which
    the statement does not name. SQLite rewrites the entries of every index on a column an
    UPDATE names, changed or not: naming them cost two index pages in each commit's WAL."""
    guard = " AND status <> 'SUSPENDED'" if not expected else _OPEN_GUARD
    if not expected and epoch:
        guard = f"{guard} AND epoch = $13"
    numbering = _numbering(dialect, "CASE WHEN $2 = 'RUNNING' THEN closed_seq ELSE {} END")
    status = "status = $2, "
    if running:
        guard, numbering, status = f"{guard} AND status = 'RUNNING'", "", ""
    return (
        f"UPDATE workflows SET {numbering}last_sequence = last_sequence + $1, {status}"
        # No state given: the stored one stays, and readers fold the state events after it.
        "state = COALESCE($3, state), state_through = CASE WHEN $3 IS NOT NULL THEN NULL "
        "WHEN $12 THEN COALESCE(state_through, last_sequence) ELSE state_through END, "
        "error = $4, step_index = $5, current_step = COALESCE($6, current_step), "
        "step_description = COALESCE($7, step_description), processed_sequence = $8, "
        "epoch = epoch + 1, updated_at = $9, source_hash = COALESCE($11, source_hash) "
        f"WHERE workflow_id = $10{guard} "
        "RETURNING last_sequence, epoch, parent_id, parent_seq"
    )


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
        row = None
        if not closed and processed_sequence > 1:
            # Past its first activation a workflow is almost always RUNNING already; when it
            # is not (PENDING again, or the guard refuses), the full statement decides.
            running = _update_sql(conn.dialect, expected is not None, epoch is not None, True)
            row = await conn.fetchrow(running, *args)
        if row is None:
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
        wakes = await _close_workflow(
            conn, workflow_id, row[2], row[3], activation, now, has_tasks=has_tasks
        )
        return CommitResult(
            is_committed=True, epoch=epoch, last_sequence=last_sequence, wakes_others=wakes
        )
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
    if task.task_id != _UNWRITTEN and await conn.execute(_FENCE, *args) != 1:
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
) -> bool:
    """`has_tasks`: False when the commit's own statement already deleted them. True when the
    close made other workflows' tasks runnable (a parent's, or cancelled children's)."""
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
        return True
    return False


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
    released = await conn.execute(
        "UPDATE tasks SET lease_owner = NULL, lease_expires_at = NULL, run_at = $1, payload = $2, "
        "recoveries = 0 WHERE task_id = $3 AND lease_owner = $4 AND attempts = $5",
        run_at,
        dumps(payload),
        task.task_id,
        task.owner,
        task.attempt,
    )
    if not released:
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
