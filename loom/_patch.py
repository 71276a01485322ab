"""State patches: nested state containers that report each in-place edit as a JSON Patch op.

A workflow's state holds `TrackedList`/`TrackedDict` in place of plain lists and dicts, so
`ctx.state.items.append(x)` costs one small RFC 6902 operation, never a diff or a copy of the
whole value. Knows nothing of runs or storage: edits go to the `PatchSink` at the root.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol, SupportsIndex

from loom._json import JSON, dumps, is_json, loads
from loom.exceptions import StateSerializationError

_NO_VALUE: Any = object()


class PatchSink(Protocol):
    """Where the edits of one state go (the run that owns it)."""

    @property
    def data(self) -> dict[str, JSON]: ...

    def note_patch(self, key: str, op: dict[str, JSON]) -> None: ...


def adopt(value: JSON, owner: object, key: str | None) -> JSON:
    """A tracked deep copy of `value` placed under `owner` (a container or the sink).

    Always a copy: state is a tree, so a value inserted twice (or taken from elsewhere in the
    state) must not be one object in two places, and the caller's object stays its own.
    """
    if isinstance(value, dict):
        node = TrackedDict()
        node._place(owner, key)
        for item_key, item in value.items():
            dict.__setitem__(node, item_key, adopt(item, node, item_key))
        return node
    if isinstance(value, list | tuple):
        array = TrackedList()
        array._place(owner, key)
        list.extend(array, [adopt(item, array, None) for item in value])
        return array
    return value


def plain(value: JSON) -> JSON:
    """A detached, untracked JSON copy (what an event records)."""
    return loads(dumps(value)) if isinstance(value, list | dict) else value


def _escape(part: str) -> str:
    return part.replace("~", "~0").replace("/", "~1")


def top_key(path: str) -> str:
    """The state field a JSON Pointer starts with (`/items/3` -> `items`)."""
    return path[1:].split("/", 1)[0].replace("~1", "/").replace("~0", "~")


class _Node:
    """Where a tracked container sits; its pointer is found by walking up at edit time.

    A container removed or replaced is found missing from its owner and stops reporting,
    so edits of a detached value (the user kept a reference) never reach history.
    """

    __slots__ = ()
    _owner: object
    _key: str | None

    def _place(self, owner: object, key: str | None) -> None:
        # Both subclasses declare these slots: a slotted mixin cannot share a list's layout.
        self._owner = owner  # type: ignore[misc]
        self._key = key  # type: ignore[misc]

    def _locate(self) -> tuple[PatchSink, list[str]] | None:
        parts: list[str] = []
        node: _Node = self
        while True:
            owner: Any = node._owner
            key = node._key
            if isinstance(owner, TrackedList):
                index = next((i for i, item in enumerate(owner) if item is node), None)
                if index is None:
                    return None
                parts.append(str(index))
                node = owner
            elif isinstance(owner, TrackedDict):
                if dict.get(owner, str(key)) is not node:
                    return None
                parts.append(str(key))
                node = owner
            elif owner is not None and owner.data.get(key) is node:
                parts.append(str(key))
                parts.reverse()
                return owner, parts
            else:
                return None

    def _emit(self, op: str, tail: str | None, value: JSON = _NO_VALUE) -> None:
        located = self._locate()
        if located is None:
            return
        sink, parts = located
        if tail is not None:
            parts.append(tail)
        entry: dict[str, JSON] = {"op": op, "path": "/" + "/".join(map(_escape, parts))}
        if value is not _NO_VALUE:
            entry["value"] = plain(value)
        sink.note_patch(parts[0], entry)

    def _checked(self, value: object, where: str) -> JSON:
        if not is_json(value):
            located = self._locate()
            path = "/".join([*(located[1] if located else ["?"]), where])
            raise StateSerializationError(path, value)
        return adopt(value, self, where if isinstance(self, TrackedDict) else None)

    def _replaced(self) -> None:
        """Record this whole container as it is now (edits with no small op: sort, slices)."""
        self._emit("replace", None, self)


class TrackedList(list[JSON], _Node):
    """A state list: `append`, `insert`, `pop`, `x[i] = v`, `del x[i]` become JSON Patch ops."""

    __slots__ = ("_key", "_owner")

    def append(self, value: JSON) -> None:
        item = self._checked(value, "-")
        list.append(self, item)
        self._emit("add", "-", item)

    def extend(self, values: Iterable[JSON]) -> None:
        for value in list(values):
            self.append(value)

    def __iadd__(self, values: Iterable[JSON]) -> TrackedList:  # type: ignore[misc]  # list's own signature, tracked
        self.extend(values)
        return self

    def insert(self, index: SupportsIndex, value: JSON) -> None:
        at = min(max(index.__index__() + (len(self) if index.__index__() < 0 else 0), 0), len(self))
        item = self._checked(value, str(at))
        list.insert(self, at, item)
        self._emit("add", str(at), item)

    def _index(self, index: SupportsIndex) -> int:
        at = index.__index__()
        at = at + len(self) if at < 0 else at
        if not 0 <= at < len(self):
            raise IndexError("list index out of range")
        return at

    def pop(self, index: SupportsIndex = -1) -> JSON:
        at = self._index(index)
        value = list.pop(self, at)
        self._emit("remove", str(at))
        return value

    def remove(self, value: JSON) -> None:
        del self[self.index(value)]

    def __setitem__(self, index: Any, value: Any) -> None:
        if isinstance(index, slice):
            list.__setitem__(self, index, [self._checked(item, "-") for item in value])
            self._replaced()
            return
        at = self._index(index)
        item = self._checked(value, str(at))
        list.__setitem__(self, at, item)
        self._emit("replace", str(at), item)

    def __delitem__(self, index: Any) -> None:
        if isinstance(index, slice):
            list.__delitem__(self, index)
            self._replaced()
            return
        at = self._index(index)
        list.__delitem__(self, at)
        self._emit("remove", str(at))

    def clear(self) -> None:
        list.clear(self)
        self._replaced()

    def sort(self, *args: Any, **kwargs: Any) -> None:
        list.sort(self, *args, **kwargs)
        self._replaced()

    def reverse(self) -> None:
        list.reverse(self)
        self._replaced()

    def __imul__(self, count: SupportsIndex) -> TrackedList:
        list.__imul__(self, count)
        self._replaced()
        return self

    def __copy__(self) -> list[JSON]:
        return list(self)

    def __deepcopy__(self, memo: dict[int, object]) -> JSON:
        return plain(self)

    def __reduce_ex__(self, protocol: SupportsIndex) -> tuple[Any, ...]:
        return (list, (plain(self),))


class TrackedDict(dict[str, JSON], _Node):
    """A state dict: `d[k] = v`, `del d[k]`, `pop`, `update`, `setdefault` become ops."""

    __slots__ = ("_key", "_owner")

    def __setitem__(self, key: str, value: JSON) -> None:
        if not isinstance(key, str):
            raise TypeError(f"state keys must be str, got {key!r}")
        op = "replace" if key in self else "add"
        item = self._checked(value, key)
        dict.__setitem__(self, key, item)
        self._emit(op, key, item)

    def __delitem__(self, key: str) -> None:
        dict.__delitem__(self, key)
        self._emit("remove", key)

    def pop(self, key: str, *default: Any) -> Any:
        if key not in self:
            return dict.pop(self, key, *default)
        value = dict.pop(self, key)
        self._emit("remove", key)
        return value

    def popitem(self) -> tuple[str, JSON]:
        key, value = dict.popitem(self)
        self._emit("remove", key)
        return key, value

    def setdefault(self, key: str, default: JSON = None) -> JSON:
        if key not in self:
            self[key] = default
        return dict.__getitem__(self, key)

    def update(self, *args: Any, **kwargs: Any) -> None:
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def __ior__(self, other: Any) -> TrackedDict:  # type: ignore[override,misc]  # tracked
        self.update(other)
        return self

    def clear(self) -> None:
        dict.clear(self)
        self._replaced()

    def __copy__(self) -> dict[str, JSON]:
        return dict(self)

    def __deepcopy__(self, memo: dict[int, object]) -> JSON:
        return plain(self)

    def __reduce_ex__(self, protocol: SupportsIndex) -> tuple[Any, ...]:
        return (dict, (plain(self),))


def apply_patch(state: dict[str, JSON], patch: list[dict[str, JSON]]) -> None:
    """Apply recorded ops to a plain state in place (folding history into a snapshot)."""
    import jsonpatch  # lazy: only readers of a not-yet-snapshotted state need it

    jsonpatch.apply_patch(state, patch, in_place=True)


def changed_keys(patch: Iterable[Mapping[str, JSON]]) -> list[str]:
    """The state fields a patch touches, sorted: what replay matches it by."""
    return sorted({top_key(str(op["path"])) for op in patch})
