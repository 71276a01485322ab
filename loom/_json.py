"""JSON at the engine boundary: one alias, one canonical encoding, one digest."""

from __future__ import annotations

import hashlib
import json
import typing
from typing import Any, TypeAlias

from pydantic import PydanticUserError, TypeAdapter

JSON: TypeAlias = Any
"""A JSON-compatible value; `Any` is confined to this alias."""

_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_canonical = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=False, allow_nan=False, sort_keys=True
)
loads = json.loads


def dumps(value: JSON) -> str:
    """Compact JSON; raises TypeError/ValueError for values JSON cannot hold."""
    return _encoder.encode(value)


def digest(value: JSON) -> str:
    """Short stable digest of a JSON value, used to match activity arguments on replay."""
    return hashlib.sha256(_canonical.encode(value).encode()).hexdigest()[:16]


def measured_digest(value: JSON) -> tuple[str, int]:
    """`digest(value)` and the UTF-8 size of its compact JSON, from one encoding.

    Sorting keys does not change the length, so the canonical text measures `dumps(value)`.
    """
    data = _canonical.encode(value).encode()
    return hashlib.sha256(data).hexdigest()[:16], len(data)


def is_json(value: object) -> bool:
    """True when `value` is made only of JSON types (no NaN, str keys)."""
    if value is None or isinstance(value, str | bool | int):
        return True
    if isinstance(value, float):
        return value == value and value not in (float("inf"), float("-inf"))
    if isinstance(value, list | tuple):
        return all(is_json(item) for item in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and is_json(v) for k, v in value.items())
    return False


def type_adapter(tp: Any) -> TypeAdapter[Any]:
    """A pydantic adapter for `tp`, also for `typing.TypedDict` on Python 3.11.

    pydantic refuses `typing.TypedDict` before 3.12; such types are checked as plain JSON
    objects rather than rejected, since users rightly write the stdlib form.
    """
    try:
        return TypeAdapter(tp)
    except PydanticUserError:
        if typing.is_typeddict(tp):
            return TypeAdapter(dict[str, Any])
        raise
