"""Progress: what each open workflow of an owner is doing now, as people read it.

Reads only the workflow rows the worker keeps current (agent, step, description); knows
nothing about replay or tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TypedDict

from loom.client import get_store
from loom.history import WorkflowStatus
from loom.store import Store, WorkflowRecord

POLL_INTERVAL = 0.5
"""Seconds between reads when no in-process wakeup came (another process runs the worker)."""

MAX_WORKFLOWS = 1000
_OPEN = (WorkflowStatus.RUNNING, WorkflowStatus.PENDING, WorkflowStatus.SUSPENDED)
_CLOSED = {
    WorkflowStatus.COMPLETED: "done",
    WorkflowStatus.FAILED: "stopped by an error",
    WorkflowStatus.CANCELED: "stopped (cancelled)",
}


class WorkflowProgress(TypedDict):
    workflow_id: str
    workflow_name: str
    agent: str | None
    message: str
    current_step: int
    total_steps: int
    status: str


class Progress(TypedDict):
    owner: str
    workflows: list[WorkflowProgress]


async def get_progress(owner: str, *, database: str | None = None) -> Progress:
    """What the owner's open (RUNNING, PENDING, SUSPENDED) workflows are doing, oldest first.

    Each entry has `workflow_id`, `workflow_name`, `agent`, `message` (e.g. "Robin is grading
    your answers"), `current_step` (1-based), `total_steps` and `status`.
    """
    return await _snapshot(get_store(database), owner)


async def stream_progress(
    owner: str, *, database: str | None = None, poll_interval: float = POLL_INTERVAL
) -> AsyncIterator[list[WorkflowProgress]]:
    """Yield the list of the owner's open workflows (`get_progress(owner)["workflows"]`) at
    once, then again each time it changes.

    Each item is one workflow's progress dict, as in loom-core:
    `async for update in loom.stream_progress("user_1"): for wf in update: wf["message"]`.
    A worker in this process wakes the stream on every commit; a worker elsewhere is seen by
    polling every `poll_interval` seconds. Close it with `aclose()` (or `contextlib.aclosing`)
    to stop listening.
    """
    store = get_store(database)
    changed = asyncio.Event()
    unsubscribe = store.wakeups.on_progress(changed.set)
    try:
        last: list[WorkflowProgress] | None = None
        while True:
            changed.clear()  # before the read: a commit during the read wakes the next wait
            workflows = (await _snapshot(store, owner))["workflows"]
            if workflows != last:
                last = workflows
                yield workflows
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), poll_interval)
    finally:
        unsubscribe()


async def _snapshot(store: Store, owner: str) -> Progress:
    records = await store.list_workflows(owner=owner, statuses=_OPEN, limit=MAX_WORKFLOWS)
    records.sort(key=lambda r: (r.created_at, r.workflow_id))
    return {"owner": owner, "workflows": [describe(record) for record in records]}


def describe(record: WorkflowRecord) -> WorkflowProgress:
    """One workflow's progress entry (also used by `loom inspect`)."""
    total = record.total_steps
    current = min(record.step_index + 1, total) if total else 0
    return {
        "workflow_id": record.workflow_id,
        "workflow_name": record.workflow_name,
        "agent": record.agent,
        "message": progress_message(record),
        "current_step": current,
        "total_steps": total,
        "status": record.status.value,
    }


def progress_message(record: WorkflowRecord) -> str:
    """ "Robin is grading your answers", falling back to the step name or the status."""
    agent = record.agent
    if record.status.is_closed:
        activity = _CLOSED[record.status]
    elif record.status is WorkflowStatus.SUSPENDED:
        activity = "paused until an operator resumes it"
    elif record.status is WorkflowStatus.PENDING and not record.current_step:
        activity = "getting started"
    elif record.step_description:
        activity = record.step_description
    elif record.current_step:
        activity = f"working on {record.current_step}"
    else:
        activity = "working"
    if agent:
        return f"{agent} is {activity}"
    return activity[:1].upper() + activity[1:]
