"""Creating workflows and appending to their history: the inserts every writer
(commits, suspension, schedules, actors) builds on."""

from __future__ import annotations

import functools
from collections.abc import Sequence

from loom._json import dumps
from loom.activation import WORKFLOW_TASK, workflow_task_key
from loom.dialect import Connection, Dialect
from loom.exceptions import WorkflowAlreadyExistsError
from loom.history import EventKind, NewEvent, WorkflowStatus
from loom.operations._reads import get_workflow
from loom.operations._rows import _NOT_CLOSED
from loom.store import NewWorkflow, TaskWorkflow, WorkflowRecord, started_payload

_INSERT_WORKFLOW = (
    "INSERT INTO workflows (workflow_id, workflow_name, workflow_version, status, "
    "input, state, owner, agent, parent_id, parent_seq, source_hash, total_steps, "
    "last_sequence, created_at, updated_at) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 1, $13, $13) "
    "ON CONFLICT (workflow_id) DO NOTHING"
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
        parts = [
            f"w AS ({_INSERT_WORKFLOW} RETURNING workflow_id)",
            f"e AS ({_INSERT_STARTED} FROM w)",
        ]
        if first_task:
            parts.append(f"t AS ({_INSERT_FIRST_TASK} FROM w ON CONFLICT (task_key) DO NOTHING)")
        inserted = await conn.fetchval(f"WITH {', '.join(parts)} SELECT COUNT(*) FROM w", *args)
        return bool(inserted)
    if not await conn.execute(_INSERT_WORKFLOW, *args):  # the count: no RETURNING table
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


async def _ensure_workflow_task(conn: Connection, workflow_id: str, now: int) -> None:
    await conn.execute(
        "INSERT INTO tasks (task_key, workflow_id, kind, payload, run_at) "
        "VALUES ($1, $2, $3, '{}', $4) ON CONFLICT (task_key) DO NOTHING",
        workflow_task_key(workflow_id),
        workflow_id,
        WORKFLOW_TASK,
        now,
    )


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


async def _append_to_open(conn: Connection, workflow_id: str, event: NewEvent, now: int) -> bool:
    if await _append_events(conn, workflow_id, [event], now, open_only=True) is None:
        return False
    await _ensure_workflow_task(conn, workflow_id, now)
    return True
