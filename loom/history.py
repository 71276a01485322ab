"""The event history: event kinds (stored values), event records and error encoding.

History is append-only; commands issued by workflow code are matched against it by position.
"""

from __future__ import annotations

import traceback
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from loom._json import JSON
from loom._patch import apply_patch
from loom.limits import DEFAULT_MAX_ERROR_CHARS, clip


class EventKind(StrEnum):
    WORKFLOW_STARTED = "WORKFLOW_STARTED"
    STEP_STARTED = "STEP_STARTED"
    ACTIVITY_SCHEDULED = "ACTIVITY_SCHEDULED"
    ACTIVITY_COMPLETED = "ACTIVITY_COMPLETED"
    ACTIVITY_FAILED = "ACTIVITY_FAILED"
    TIMER_STARTED = "TIMER_STARTED"
    TIMER_FIRED = "TIMER_FIRED"
    SIGNAL_WAIT_STARTED = "SIGNAL_WAIT_STARTED"
    SIGNAL_RECEIVED = "SIGNAL_RECEIVED"
    CHILD_STARTED = "CHILD_STARTED"
    CHILD_COMPLETED = "CHILD_COMPLETED"
    CHILD_FAILED = "CHILD_FAILED"
    STATE_SET = "STATE_SET"
    STATE_UPDATE = "STATE_UPDATE"
    STATE_PATCH = "STATE_PATCH"
    CANCEL_REQUESTED = "CANCEL_REQUESTED"
    MESSAGE_SENT = "MESSAGE_SENT"
    """`ctx.send`/`ctx.ask` to an actor: delivered with the activation that records it."""
    WORKFLOW_COMPLETED = "WORKFLOW_COMPLETED"
    WORKFLOW_FAILED = "WORKFLOW_FAILED"
    WORKFLOW_CANCELED = "WORKFLOW_CANCELED"
    WORKFLOW_SUSPENDED = "WORKFLOW_SUSPENDED"
    WORKFLOW_RESUMED = "WORKFLOW_RESUMED"


COMMAND_KINDS = frozenset(
    {
        EventKind.STEP_STARTED,
        EventKind.ACTIVITY_SCHEDULED,
        EventKind.TIMER_STARTED,
        EventKind.SIGNAL_WAIT_STARTED,
        EventKind.CHILD_STARTED,
        EventKind.STATE_SET,
        EventKind.STATE_UPDATE,
        EventKind.STATE_PATCH,
        EventKind.MESSAGE_SENT,
    }
)
"""Events written by workflow code itself; replay matches them, the rest are delivered."""

OPERATOR_SUSPENSION = "SuspendedByOperator"
"""The error type `handle.suspend()` keeps (a worker's suspension keeps the error it hit)."""
STATE_KINDS = (EventKind.STATE_SET, EventKind.STATE_UPDATE, EventKind.STATE_PATCH)
"""Events that change the state; folded in order they rebuild it (see `fold_state`)."""

CLOSING_KINDS = frozenset(
    {EventKind.WORKFLOW_COMPLETED, EventKind.WORKFLOW_FAILED, EventKind.WORKFLOW_CANCELED}
)


class WorkflowStatus(StrEnum):
    """Lifecycle of a workflow as stored and reported by `handle.status()`."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELED = "CANCELED"
    SUSPENDED = "SUSPENDED"
    """Open but parked: nothing of it runs until `resume` (a deploy-fixable error or an
    operator's `suspend`); `result()` keeps waiting, signals and timers are kept."""

    @classmethod
    def _missing_(cls, value: object) -> WorkflowStatus | None:
        """Accept other spellings as input (`"cancelled"`, `"CANCELLED"`, any case).

        loom-core spelled it CANCELLED; the stored and reported value stays CANCELED, so
        `WorkflowStatus("CANCELLED") is WorkflowStatus.CANCELED`.
        """
        if not isinstance(value, str):
            return None
        spelled = value.strip().upper()
        if spelled == "CANCELLED":
            spelled = "CANCELED"
        return cls._value2member_map_.get(spelled)  # type: ignore[return-value]  # members

    @property
    def is_closed(self) -> bool:
        return self in (WorkflowStatus.COMPLETED, WorkflowStatus.FAILED, WorkflowStatus.CANCELED)


@dataclass(frozen=True, slots=True)
class Event:
    """One history row."""

    sequence: int
    kind: EventKind
    payload: dict[str, JSON]
    created_at: int


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event to append; the store assigns its sequence at commit time."""

    kind: EventKind
    payload: dict[str, JSON]


def fold_state(state: dict[str, JSON], events: Iterable[Event]) -> dict[str, JSON]:
    """Apply the state events among `events` to `state` (a plain copy, changed in place).

    What a reader does with the stored snapshot and the events written after it: the
    snapshot is rewritten only now and then, so a step costs its change, not the state.
    """
    for event in events:
        payload = event.payload
        if event.kind is EventKind.STATE_SET:
            state[str(payload["key"])] = payload["value"]
        elif event.kind is EventKind.STATE_UPDATE:
            for key in payload.get("removed") or ():
                state.pop(key, None)
            state.update(payload["changes"])
        elif event.kind is EventKind.STATE_PATCH:
            apply_patch(state, payload["patch"])
    return state


def encode_error(
    err: BaseException, *, max_chars: int = DEFAULT_MAX_ERROR_CHARS, **details: JSON
) -> dict[str, JSON]:
    """History stores errors as `{type, message, details}` so handles re-raise them typed.

    Every text in it (message, traceback, string details) is cut to `max_chars`
    (`Limits.max_error_chars`) with a marker: an error can carry a value of any size (a
    guest's URL, a rejected payload) and must not carry it into history.
    """
    message = getattr(err, "error_message", None) or str(err)
    info: dict[str, JSON] = {
        "traceback": "".join(traceback.format_exception(err)[-6:]),
        **details,
    }
    for attr in ("activity_name", "expected", "actual", "retryable", "error_type"):
        if hasattr(err, attr):
            info[attr] = getattr(err, attr)
    extra = getattr(err, "history_details", None)  # structured fields of composite errors
    if callable(extra):
        info.update(_clipped(extra(), max_chars))
    for key, value in info.items():
        if isinstance(value, str):
            info[key] = clip(value, max_chars)
    return {"type": type(err).__name__, "message": clip(str(message), max_chars), "details": info}


def _clipped(value: JSON, max_chars: int) -> JSON:
    """`value` with every string in it cut to `max_chars` (nested error details)."""
    if isinstance(value, str):
        return clip(value, max_chars)
    if isinstance(value, dict):
        return {key: _clipped(item, max_chars) for key, item in value.items()}
    if isinstance(value, list):
        return [_clipped(item, max_chars) for item in value]
    return value
