"""The stable JSON shapes of a workflow and an event: one definition for `loom … --json` and
the dashboard's API, so a script reading either sees the same fields (snake_case keys)."""

from __future__ import annotations

from loom._json import JSON
from loom.activation import ACTOR_PREFIX, MAILBOX
from loom.history import Event, EventKind
from loom.progress import progress_message
from loom.store import WorkflowRecord
from loom.usage import usage_totals


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


def usage_json(events: list[Event]) -> dict[str, JSON]:
    """The workflow's LLM usage: tokens and cost of every model call in its history."""
    return usage_totals([e.payload for e in events if e.kind is EventKind.ACTIVITY_COMPLETED])


EGRESS_FIELDS = (
    "method",
    "scheme",
    "host",
    "port",
    "path",
    "status",
    "bytes_out",
    "bytes_in",
    "duration_ms",
    "error",
)
"""What the egress journal keeps of each sandboxed HTTP request (never a body, a query, a
header value or a secret: see `wasm_activities.Usage.egress`)."""


def egress_json(events: list[Event]) -> list[dict[str, JSON]]:
    """The workflow's egress journal: each sandboxed HTTP request, with the activity call
    (`seq`, `activity`, `version`, `attempt`) whose completion recorded it."""
    out: list[dict[str, JSON]] = []
    for event in events:
        usage = event.payload.get("usage")
        if event.kind is not EventKind.ACTIVITY_COMPLETED or not isinstance(usage, dict):
            continue
        pin = event.payload.get("pin")
        call: dict[str, JSON] = {
            "seq": event.payload.get("seq"),
            "activity": event.payload.get("name"),
            "version": pin.get("version") if isinstance(pin, dict) else None,
            "attempt": event.payload.get("attempt"),
            "at": event.created_at,
        }
        for entry in usage.get("egress") or ():
            if isinstance(entry, dict):
                out.append(call | {name: entry.get(name) for name in EGRESS_FIELDS})
    return out


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
