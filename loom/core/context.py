"""loom-core's `from loom.core.context import WorkflowContext`: the same class as `loom`'s."""

from loom.context import WorkflowContext

__all__ = ["WorkflowContext"]
