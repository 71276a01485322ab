"""loom-core's `from loom.core.workflow import Workflow`: the same class as `loom`'s."""

from loom.workflow import Workflow

__all__ = ["Workflow"]
