"""What one workflow task produces for the store: new events, tasks, children, logs.

These records sit below both sides that exchange them: replay builds an `Activation`, the
store commits it. Keeping them here (not in `loom.replay`) is what lets the store layer
import nothing of the runtime.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from loom._json import JSON
from loom.history import NewEvent, WorkflowStatus

TaskKind = str
WORKFLOW_TASK = "workflow"
ACTIVITY_TASK = "activity"
TIMER_TASK = "timer"
ACTOR_PREFIX = "actor:"
"""Workflow names (and ids) of actors start with it: `actor:Cart`, `actor:Cart:KEY`."""
MAILBOX = "loom.actor.message"
"""The signal name of an actor's mailbox: messages are signals, durable and ordered."""


def workflow_task_key(workflow_id: str) -> str:
    """The one workflow task a workflow can have: its key makes a second insert a no-op."""
    return f"w:{workflow_id}"


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """A task to create with the activation (activity attempt or timer)."""

    key: str
    kind: TaskKind
    payload: dict[str, JSON]
    run_at: int


@dataclass(frozen=True, slots=True)
class ChildStart:
    """A child workflow to create in the same transaction as the parent's command."""

    workflow_id: str
    workflow_name: str
    workflow_version: str
    input: JSON
    state: dict[str, JSON]
    source_hash: str
    total_steps: int
    parent_seq: int
    seed: int
    trace: dict[str, str] | None = None
    """The starting workflow task's trace context: the child's spans join the parent's trace."""


@dataclass(frozen=True, slots=True)
class NewWorkflow:
    """A workflow to create: what a client's start, a parent's child start and an actor's
    first message all hand the store."""

    workflow_id: str
    workflow_name: str
    workflow_version: str
    input: JSON
    state: dict[str, JSON]
    source_hash: str
    total_steps: int
    seed: int
    owner: str | None = None
    agent: str | None = None
    parent_id: str | None = None
    parent_seq: int | None = None
    trace: dict[str, str] | None = None
    """The starter's W3C trace context, kept in WORKFLOW_STARTED for every later task."""


@dataclass(frozen=True, slots=True)
class Message:
    """A message for an actor's mailbox, committed with the activation that sent it."""

    actor: NewWorkflow
    """The actor's workflow, created by this message if absent (start-if-absent)."""
    payload: dict[str, JSON]


@dataclass(frozen=True, slots=True)
class Reply:
    """A handler's answer to an `ask`: a row the asker takes (`workflow_id` None) or, for
    a workflow that asked, a signal `signal` appended to that workflow."""

    reply_id: str
    body: dict[str, JSON]
    workflow_id: str | None = None
    signal: str | None = None


@dataclass(frozen=True, slots=True)
class Restart:
    """Continue-as-new: the history is replaced by `started` (WORKFLOW_STARTED's payload,
    carrying the state snapshot) followed by `carried`, the events not yet consumed, and
    then whatever arrived after the run's cursor."""

    started: dict[str, JSON]
    carried: list[NewEvent]


@dataclass(slots=True)
class Activation:
    """Everything one workflow task produced; the store commits it in one transaction."""

    events: list[NewEvent] = field(default_factory=list)
    tasks: list[TaskSpec] = field(default_factory=list)
    cancel_task_keys: list[str] = field(default_factory=list)
    children: list[ChildStart] = field(default_factory=list)
    logs: list[tuple[str, str, int]] = field(default_factory=list)
    status: WorkflowStatus = WorkflowStatus.RUNNING
    state: dict[str, JSON] | None = None
    """The whole state when the store should rewrite its snapshot; None keeps the stored
    one, which the activation's state events (folded by readers) bring up to date."""
    step_index: int = 0
    error: dict[str, JSON] | None = None
    source_hash: str | None = None
    """The code that computed it; the store keeps it as the workflow's current code."""
    messages: list[Message] = field(default_factory=list)
    replies: list[Reply] = field(default_factory=list)
    restart: Restart | None = None
