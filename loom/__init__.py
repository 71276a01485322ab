"""Loom: durable, typed workflows whose activities can be sandboxed WebAssembly modules."""

from loom.activity import Activity, activity
from loom.client import WorkflowHandle, configure, get_handle
from loom.context import WorkflowContext
from loom.exceptions import (
    ActivityFailedError,
    ActivityTimeoutError,
    LoomError,
    NonDeterministicWorkflowError,
    PayloadTooLargeError,
    StateSerializationError,
    StoreFullError,
    WorkflowAlreadyExistsError,
    WorkflowCancelledError,
    WorkflowClosedError,
    WorkflowDefinitionError,
    WorkflowExecutionError,
    WorkflowNotFoundError,
    WorkflowStillRunningError,
)
from loom.history import WorkflowStatus
from loom.limits import Limits
from loom.progress import get_progress, stream_progress
from loom.worker import Worker
from loom.workflow import CompiledWorkflow, Workflow, step, workflow

__all__ = [
    "Activity",
    "ActivityFailedError",
    "ActivityTimeoutError",
    "CompiledWorkflow",
    "Limits",
    "LoomError",
    "NonDeterministicWorkflowError",
    "PayloadTooLargeError",
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
    "configure",
    "get_handle",
    "get_progress",
    "step",
    "stream_progress",
    "workflow",
]
