"""Workflow state: a JSON object behind attribute and dict access, every mutation an event.

Knows nothing about storage; it reports mutations to the run that owns it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, ItemsView, Iterator, KeysView, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from loom._json import JSON, dumps, loads

if TYPE_CHECKING:
    from loom.replay import WorkflowRun


class StateProxy:
    """`ctx.state`: read and assign fields as attributes or keys.

    `ctx.state.paid = True` and `ctx.state["paid"] = True` record STATE_SET at once;
    `await ctx.state.update(fn)` (which replaces the state with what `fn` returns) and
    `async with ctx.state.batch():` record one STATE_UPDATE.
    In-place edits of nested lists/dicts (`ctx.state.items.append(x)`) are recorded before
    the next command as one STATE_PATCH of JSON Patch (RFC 6902) operations: a step costs
    what it changed, not the size of the state.
    """

    __slots__ = ("_batch", "_data", "_run")

    def __init__(self, run: WorkflowRun, data: dict[str, JSON]) -> None:
        object.__setattr__(self, "_run", run)
        object.__setattr__(self, "_data", data)
        object.__setattr__(self, "_batch", None)

    def __getattr__(self, key: str) -> Any:
        try:
            return self._data[key]
        except KeyError:
            raise AttributeError(
                f"state has no field {key!r} (fields: {', '.join(self._data) or 'none'})"
            ) from None

    def __setattr__(self, key: str, value: Any) -> None:
        self._assign(key, value)

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._assign(key, value)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"State({self._data!r})"

    def get(self, key: str, default: Any = None) -> Any:
        return self._data.get(key, default)

    def keys(self) -> KeysView[str]:
        data: dict[str, JSON] = self._data
        return data.keys()

    def items(self) -> ItemsView[str, JSON]:
        data: dict[str, JSON] = self._data
        return data.items()

    def to_dict(self) -> dict[str, JSON]:
        """A deep copy of the current state."""
        return dict(loads(dumps(self._data)))

    async def set(self, key: str, value: Any) -> None:
        """Assign one field (records STATE_SET)."""
        self._assign(key, value)

    async def update(self, fn: Callable[[dict[str, Any]], Mapping[str, Any] | None]) -> None:
        """Replace the state with what `fn(copy_of_state)` returns (loom-core's semantics).

        Keys the returned mapping leaves out are removed, so `update(lambda s: {"n": 1})`
        leaves only `n`. A `fn` that mutates its argument and returns None replaces the state
        with the mutated copy. Changed and removed keys are recorded as one STATE_UPDATE;
        a replay runs `fn` again and checks it changes and removes the same keys.
        """
        draft = self.to_dict()
        result = fn(draft)
        new = draft if result is None else result
        if not isinstance(new, Mapping):
            raise TypeError(
                f"ctx.state.update(fn): fn must return the new state as a dict (or None "
                f"after editing its argument), got {type(new).__name__}"
            )
        changes: dict[str, JSON] = {}
        for key, value in new.items():
            normal = self._run.adopt(key, value)
            old = self._data.get(key, _MISSING)
            # Compared as JSON text: 1, 1.0 and True are equal in Python, not in the state.
            if old is _MISSING or dumps(old) != dumps(normal):
                changes[key] = normal
        removed = [key for key in self._data if key not in new]
        self._run.record_state_update(changes, removed)

    @asynccontextmanager
    async def batch(self) -> AsyncIterator[StateProxy]:
        """Group assignments inside the block into one STATE_UPDATE (recorded on exit)."""
        if self._batch is not None:
            raise RuntimeError("ctx.state.batch() blocks cannot be nested")
        pending: dict[str, JSON] = {}
        object.__setattr__(self, "_batch", pending)
        try:
            yield self
        finally:
            object.__setattr__(self, "_batch", None)
        if pending:
            self._run.record_state_update(pending)

    def _assign(self, key: str, value: Any) -> None:
        normal = self._run.adopt(key, value)
        if self._batch is not None:
            self._batch[key] = normal
            self._data[key] = normal
            return
        self._run.record_state_set(key, normal)


_MISSING = object()


class _FieldFirst:
    """A dict-style helper of `StateProxy` that yields to a state field of the same name:
    with a declared `items: list[str]`, `ctx.state.items` is that list, not `dict.items`."""

    def __init__(self, method: Callable[..., Any], name: str) -> None:
        self._method = method
        self._name = name
        self.__doc__ = method.__doc__

    def __get__(self, obj: StateProxy | None, owner: type | None = None) -> Any:
        if obj is None:
            return self._method
        data: dict[str, JSON] = object.__getattribute__(obj, "_data")
        if self._name in data:
            return data[self._name]
        return self._method.__get__(obj, owner)


for _helper in ("get", "keys", "items", "to_dict", "set", "update", "batch"):
    setattr(StateProxy, _helper, _FieldFirst(getattr(StateProxy, _helper), _helper))
