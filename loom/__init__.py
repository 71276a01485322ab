"""Loom: durable, typed workflows whose activities can be sandboxed WebAssembly modules.

The public names load on first use (PEP 562): `import loom` itself stays cheap, so `loom
--help` and the read-only commands never pay for wasmtime, jsonschema, pydantic or asyncpg
until they touch them (measured: `import loom` took 0.4 s eagerly).
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from loom.activity import Activity, activity
    from loom.actor import Actor, actor, ask, handler, send
    from loom.breaker import CircuitBreaker
    from loom.client import WorkflowHandle, configure, get_handle
    from loom.context import WorkflowContext
    from loom.cron import Schedule
    from loom.exceptions import (
        ActivityFailedError,
        ActivityTimeoutError,
        ActorHandlerError,
        BreakerNotFoundError,
        CancelledWorkflowError,
        CircuitOpenError,
        CompensationError,
        LLMOutputError,
        LoomError,
        NonDeterministicWorkflowError,
        PayloadTooLargeError,
        ScheduleError,
        ScheduleNotFoundError,
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
    from loom.scheduler import ScheduleHandle, get_schedule, list_schedules, schedule
    from loom.worker import Worker
    from loom.workflow import CompiledWorkflow, Input, State, Workflow, step, workflow

__version__: str  # set on first use by __getattr__ (reading package metadata costs ~20 ms)

_EXPORTS = {
    "Actor": "loom.actor",
    "actor": "loom.actor",
    "ask": "loom.actor",
    "handler": "loom.actor",
    "send": "loom.actor",
    "ActorHandlerError": "loom.exceptions",
    "CircuitBreaker": "loom.breaker",
    "Schedule": "loom.cron",
    "BreakerNotFoundError": "loom.exceptions",
    "CircuitOpenError": "loom.exceptions",
    "ScheduleError": "loom.exceptions",
    "ScheduleNotFoundError": "loom.exceptions",
    "ScheduleHandle": "loom.scheduler",
    "get_schedule": "loom.scheduler",
    "list_schedules": "loom.scheduler",
    "schedule": "loom.scheduler",
    "Activity": "loom.activity",
    "ActivityFailedError": "loom.exceptions",
    "ActivityTimeoutError": "loom.exceptions",
    "CancelledWorkflowError": "loom.exceptions",
    "CompensationError": "loom.exceptions",
    "CompiledWorkflow": "loom.workflow",
    "Input": "loom.workflow",
    "LLMOutputError": "loom.exceptions",
    "Limits": "loom.limits",
    "LoomError": "loom.exceptions",
    "NonDeterministicWorkflowError": "loom.exceptions",
    "PayloadTooLargeError": "loom.exceptions",
    "Saga": "loom.saga",
    "State": "loom.workflow",
    "StateSerializationError": "loom.exceptions",
    "StoreFullError": "loom.exceptions",
    "Worker": "loom.worker",
    "Workflow": "loom.workflow",
    "WorkflowAlreadyExistsError": "loom.exceptions",
    "WorkflowCancelledError": "loom.exceptions",
    "WorkflowClosedError": "loom.exceptions",
    "WorkflowContext": "loom.context",
    "WorkflowDefinitionError": "loom.exceptions",
    "WorkflowExecutionError": "loom.exceptions",
    "WorkflowHandle": "loom.client",
    "WorkflowNotFoundError": "loom.exceptions",
    "WorkflowStatus": "loom.history",
    "WorkflowStillRunningError": "loom.exceptions",
    "activity": "loom.activity",
    "configure": "loom.client",
    "get_handle": "loom.client",
    "get_progress": "loom.progress",
    "step": "loom.workflow",
    "stream_progress": "loom.progress",
    "workflow": "loom.workflow",
}
"""Each public name and the module that defines it."""

__all__ = [
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


def __getattr__(name: str) -> object:
    """Import a public name's module on first use (and `loom.wdl`, the declarative
    language, whose models and CEL most programs never need)."""
    module = _EXPORTS.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value  # later lookups skip this function
        return value
    if name == "wdl":
        return importlib.import_module("loom.wdl")
    if name == "__version__":
        from importlib import metadata

        try:
            version = metadata.version("loom")
        except metadata.PackageNotFoundError:  # a source tree on sys.path, not installed
            version = "0+unknown"
        globals()["__version__"] = version
        return version
    raise AttributeError(f"module 'loom' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*__all__, "__version__", "wdl"])


_SHADOWED = frozenset(name for name, module in _EXPORTS.items() if module == f"loom.{name}")
"""Public names equal to their module's name (`loom.activity`, `loom.workflow`)."""


class _Package(types.ModuleType):
    """Importing submodule `loom.activity` sets attribute `activity` of this package to the
    module, which would hide the decorator of that name; eager imports used to overwrite it
    right after, and this keeps the name the decorator's."""

    def __setattr__(self, name: str, value: object) -> None:
        if name in _SHADOWED and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
