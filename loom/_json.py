"""JSON at the engine boundary: one alias, one canonical encoding, one digest."""

from __future__ import annotations

import hashlib
import json
import typing
from json.encoder import encode_basestring
from typing import Annotated, Any, TypeAlias

import typing_extensions
from pydantic import AfterValidator, ConfigDict, PydanticUserError, TypeAdapter

JSON: TypeAlias = Any
"""A JSON-compatible value; `Any` is confined to this alias."""

_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_canonical = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=False, allow_nan=False, sort_keys=True
)
loads = json.loads


def _made_once(sort_keys: bool) -> Any:
    """A compact C encoder made once (None without the json C accelerator).

    `JSONEncoder.encode` makes a new one, and a dict of the containers seen, for every value:
    most of the cost of the ~17 payloads encoded per workflow. Without that dict a circular
    value ends in RecursionError, which `_encode` tells as a ValueError."""
    make = getattr(json.encoder, "c_make_encoder", None)  # private: typeshed omits it
    if make is None:
        return None
    return make(None, _encoder.default, encode_basestring, None, ":", ",", sort_keys, False, False)


_compact = _made_once(sort_keys=False)
_sorted = _made_once(sort_keys=True)


def _encode(encoder: Any, fallback: json.JSONEncoder, value: JSON) -> str:
    if encoder is None or isinstance(value, str):
        return fallback.encode(value)
    try:
        return "".join(encoder(value, 0))
    except RecursionError:
        raise ValueError("the value is circular or nested too deeply for JSON") from None


def dumps(value: JSON) -> str:
    """Compact JSON; raises TypeError/ValueError for values JSON cannot hold."""
    return _encode(_compact, _encoder, value)


def digest(value: JSON) -> str:
    """Short stable digest of a JSON value, used to match activity arguments on replay."""
    return hashlib.sha256(_encode(_sorted, _canonical, value).encode()).hexdigest()[:16]


def measured_digest(value: JSON) -> tuple[str, int]:
    """`digest(value)` and the UTF-8 size of its compact JSON, from one encoding.

    Sorting keys does not change the length, so the canonical text measures `dumps(value)`.
    """
    data = _encode(_sorted, _canonical, value).encode()
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
    """A pydantic adapter for `tp`, also for the two dict forms pydantic cannot take itself.

    - `typing.TypedDict` on Python 3.11 (pydantic refuses it before 3.12): it is validated
      as the same TypedDict rebuilt from `typing_extensions`, required keys and all.
    - A plain `dict` subclass with annotations (`class S(dict): x: int`, the loom-core style,
      and `loom.State`/`loom.Input`): every annotated key is optional and checked when
      present, other keys are kept, class-level values are defaults, and the validated
      value is an instance of the class, so `result["x"]` and `result.get("x")` work.
    """
    if is_dict_model(tp):
        return TypeAdapter(_dict_model_schema(tp))
    try:
        return TypeAdapter(tp)
    except PydanticUserError:
        if not typing.is_typeddict(tp):
            raise
    try:
        return TypeAdapter(_rebuilt_typeddict(tp))
    except PydanticUserError:  # nested stdlib TypedDicts: checked as a plain JSON object
        return TypeAdapter(dict[str, Any])


def is_dict_model(tp: Any) -> bool:
    """Whether `tp` is a `dict` subclass declared like a model (not a TypedDict)."""
    return (
        isinstance(tp, type)
        and issubclass(tp, dict)
        and tp is not dict
        and not typing.is_typeddict(tp)
    )


def dict_model_defaults(tp: type[dict[str, Any]]) -> dict[str, JSON]:
    """The class-level values of the annotated keys of a dict model (its defaults).

    `loom.State`/`loom.Input` subclasses keep them in `__loom_defaults__` (so that they do
    not shadow attribute reads of the keys); a plain dict subclass keeps them as class
    attributes.
    """
    defaults: dict[str, JSON] = {}
    for klass in reversed(tp.__mro__):
        defaults.update(vars(klass).get("__loom_defaults__", {}))
        for key in vars(klass).get("__annotations__", {}):
            if key in vars(klass):
                defaults[key] = vars(klass)[key]
    return defaults


_make_typeddict: Any = typing_extensions.TypedDict
"""The functional TypedDict form, built at run time (so typed as Any: mypy wants literals)."""


def _dict_model_schema(tp: type[dict[str, Any]]) -> Any:
    hints = typing.get_type_hints(tp)
    fields = {key: typing_extensions.NotRequired[hint] for key, hint in hints.items()}
    shape = _make_typeddict(tp.__name__, fields)
    shape.__pydantic_config__ = ConfigDict(extra="allow")  # a dict keeps undeclared keys
    defaults = dict_model_defaults(tp)

    def build(value: dict[str, Any]) -> dict[str, Any]:
        return tp({**loads(dumps(defaults)), **value})

    return Annotated[shape, AfterValidator(build)]


def _rebuilt_typeddict(tp: Any) -> Any:
    hints = typing.get_type_hints(tp)
    required = getattr(tp, "__required_keys__", frozenset(hints))
    fields = {
        key: typing_extensions.Required[hint]
        if key in required
        else typing_extensions.NotRequired[hint]
        for key, hint in hints.items()
    }
    return _make_typeddict(tp.__name__, fields)
