"""Loom: durable, typed workflows whose activities can be sandboxed WebAssembly modules."""

from importlib import metadata as _metadata

from loom.activity import Activity, activity
from loom.actor import Actor, actor, ask, handler, send
from loom.client import WorkflowHandle, configure, get_handle
from loom.context import WorkflowContext
from loom.exceptions import (
    ActivityFailedError,
    ActivityTimeoutError,
    ActorHandlerError,
    CancelledWorkflowError,
    CompensationError,
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
from loom.saga import Saga
from loom.worker import Worker
from loom.workflow import CompiledWorkflow, Input, State, Workflow, step, workflow

__all__ = [
    "Activity",
    "ActivityFailedError",
    "ActivityTimeoutError",
    "Actor",
    "ActorHandlerError",
    "CancelledWorkflowError",
    "CompensationError",
    "CompiledWorkflow",
    "Input",
    "Limits",
    "LoomError",
    "NonDeterministicWorkflowError",
    "PayloadTooLargeError",
    "Saga",
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
    "handler",
    "send",
    "step",
    "stream_progress",
    "workflow",
]

try:
    __version__ = _metadata.version("loom")
except _metadata.PackageNotFoundError:  # a source tree on sys.path, not installed
    __version__ = "0+unknown"


def __getattr__(name: str) -> object:
    """`loom.wdl` (declarative workflows) loads on first use: most programs never need its
    models, and CEL loads only when an expression is first compiled."""
    if name == "wdl":
        import importlib

        return importlib.import_module("loom.wdl")
    raise AttributeError(f"module 'loom' has no attribute {name!r}")
