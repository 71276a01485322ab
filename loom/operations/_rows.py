"""What the operations share: workflow row decoding, `_event`, and the status
predicates their SQL repeats."""

from __future__ import annotations

from typing import Any

from loom._json import loads
from loom.history import Event, EventKind, WorkflowStatus
from loom.store import WorkflowRecord

WORKFLOW_COLUMNS = (
    "workflow_id, workflow_name, workflow_version, status, input, state, error, owner, agent, "
    "parent_id, current_step, step_description, step_index, total_steps, last_sequence, "
    "processed_sequence, epoch, created_at, updated_at, state_through"
)
_OPEN = "status IN ('PENDING', 'RUNNING')"
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
