"""The public surface of `loom`: changing it is a deliberate edit of this list."""

from __future__ import annotations

import inspect

import loom

PUBLIC = [
    "Activity",
    "ActivityFailedError",
    "ActivityTimeoutError",
    "Actor",
    "ActorHandlerError",
    "BreakerNotFoundError",
    "CancelledWorkflowError",
    "CircuitBreaker",
    "CircuitOpenError",
    "CompensationError",
    "CompiledWorkflow",
    "Input",
    "LLMOutputError",
    "Limits",
    "LoomError",
    "NonDeterministicWorkflowError",
    "PayloadTooLargeError",
    "Saga",
    "Schedule",
    "ScheduleError",
    "ScheduleHandle",
    "ScheduleNotFoundError",
    "State",
    "StateSerializationError",
    "StoreFullError",
    "Worker",
    "Workflow",
    "WorkflowAlreadyExistsError",
    "WorkflowCancelledError",
    "WorkflowClosedError",
    "WorkflowContext",
    "WorkflowDefinitionError",
    "WorkflowExecutionError",
    "WorkflowHandle",
    "WorkflowNotFoundError",
    "WorkflowStatus",
    "WorkflowStillRunningError",
    "activity",
    "actor",
    "ask",
    "configure",
    "get_handle",
    "get_progress",
    "get_schedule",
    "handler",
    "list_schedules",
    "schedule",
    "send",
    "step",
    "stream_progress",
    "workflow",
]


def test_all_is_frozen() -> None:
    assert loom.__all__ == PUBLIC


def test_every_public_name_is_documented() -> None:
    missing = [name for name in PUBLIC if not inspect.getdoc(getattr(loom, name))]
    assert missing == []


def test_errors_share_one_base_except_cancellation() -> None:
    errors = [getattr(loom, n) for n in PUBLIC if n.endswith("Error")]
    for error in errors:
        if error is loom.WorkflowCancelledError:
            # Derives from BaseException so `except Exception` in workflow code can't swallow it.
            assert not issubclass(error, Exception)
        else:
            assert issubclass(error, loom.LoomError), error
