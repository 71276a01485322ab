"""Actors: keyed workflows with a mailbox; delivering messages, restarts and replies."""

from __future__ import annotations

from loom._json import JSON, dumps, loads
from loom.activation import ACTOR_PREFIX, MAILBOX, Activation, Restart
from loom.dialect import Connection
from loom.exceptions import WorkflowAlreadyExistsError, WorkflowClosedError
from loom.history import EventKind, NewEvent, WorkflowStatus
from loom.operations._rows import WORKFLOW_COLUMNS, _record
from loom.operations._workflows import (
    _append_events,
    _append_to_open,
    _ensure_workflow_task,
    _insert_events,
    _insert_workflow,
)
from loom.store import NewWorkflow, WorkflowRecord


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
