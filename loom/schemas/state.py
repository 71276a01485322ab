"""loom-core's `from loom.schemas.state import Input, State`: the same classes as `loom`'s."""

from loom.workflow import Input, State

__all__ = ["Input", "State"]
