"""The stable JSON shapes of a workflow and an event: one definition for `loom … --json` and
the dashboard's API, so a script reading either sees the same fields (snake_case keys)."""

from __future__ import annotations

from loom._json import JSON
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
