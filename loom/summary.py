"""The stable JSON shapes of a workflow and an event: one definition for `loom … --json` and
the dashboard's API, so a script reading either sees the same fields (snake_case keys)."""

from __future__ import annotations

from loom._json import JSON
from loom.activation import ACTOR_PREFIX, MAILBOX
from loom.history import Event, EventKind
from loom.progress import progress_message
from loom.store import WorkflowRecord


def workflow_json(record: WorkflowRecord, *, full: bool = False) -> dict[str, JSON]:
    """One workflow; `full` adds its progress message, input, state, error and history length."""
    data: dict[str, JSON] = {
        "workflow_id": record.workflow_id,
        "workflow_name": record.workflow_name,
        "workflow_version": record.workflow_version,
        "status": record.status.value,
        "owner": record.owner,
        "agent": record.agent,
        "parent_id": record.parent_id,
        "current_step": record.current_step,
        "step_description": record.step_description,
        "step_number": min(record.step_index + 1, record.total_steps),
        "total_steps": record.total_steps,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
    }
    if full:
        data |= {
            "message": progress_message(record),
            "input": record.input,
            "state": record.state,
            "error": record.error,
            "event_count": record.last_sequence,
        }
    return data


def event_json(event: Event) -> dict[str, JSON]:
    return {
        "sequence": event.sequence,
        "kind": event.kind.value,
        "payload": event.payload,
        "created_at": event.created_at,
    }


def actor_summary(record: WorkflowRecord, events: list[Event] | None = None) -> dict[str, JSON]:
    """The JSON shape of an actor for the CLI and the dashboard: `events` (and `handled`,
    the messages handled so far) only when its history is given."""
    origin = record.input if isinstance(record.input, dict) else {}
    type_, _, key = record.workflow_id.removeprefix(ACTOR_PREFIX).partition(":")
    summary: dict[str, JSON] = {
        "actor_type": type_,
        "key": key,
        "workflow_id": record.workflow_id,
        "status": record.status.value,
        "state": record.state,
        "snapshots": int(origin.get("snapshots", 0)),
        "created_at": record.created_at,
        "updated_at": record.updated_at,
    }
    if record.error:
        summary["error"] = record.error
    if events is not None:
        waits = sum(
            1
            for e in events
            if e.kind is EventKind.SIGNAL_WAIT_STARTED and e.payload.get("key") == MAILBOX
        )
        # Each message is handled after the wait that received it; the last wait is open.
        summary["handled"] = int(origin.get("handled", 0)) + max(waits - 1, 0)
        summary["events"] = len(events)
    return summary
