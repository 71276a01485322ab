"""The engine's one JSON encoding: `loom._json` keeps one C encoder instead of the standard
library's encoder-per-call, and must still write exactly what `json.dumps` writes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from loom._json import digest, dumps, measured_digest

VALUES: list[Any] = [
    0,
    -7,
    10**30,
    1.5,
    -0.0,
    1e100,
    True,
    None,
    "",
    'é\n"\\ \u2028',
    [],
    {},
    [1, [2, [3, {"a": None}]]],
    {"b": 1, "a": [2.25, "x"], "c": {"z": {}, "y": []}},
    (1, 2),
]


@pytest.mark.parametrize("value", VALUES)
def test_dumps_writes_what_json_dumps_writes(value: Any) -> None:
    assert dumps(value) == json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def test_digest_ignores_key_order_and_measures_the_compact_text() -> None:
    one = {"b": 1, "a": {"d": [1, 2], "c": "é"}}
    other = {"a": {"c": "é", "d": [1, 2]}, "b": 1}
    assert digest(one) == digest(other)
    assert digest(one) != digest({"a": 1})
    assert measured_digest(one) == (digest(one), len(dumps(one).encode()))


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (float("nan"), ValueError),
        ({"a": [float("inf")]}, ValueError),
        ({1, 2}, TypeError),
        ({"a": object()}, TypeError),
    ],
)
def test_values_json_cannot_hold_are_refused(value: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        dumps(value)
    with pytest.raises(error):
        digest(value)


def test_a_circular_value_is_a_value_error_and_the_encoder_stays_usable() -> None:
    circular: list[Any] = []
    circular.append(circular)
    with pytest.raises(ValueError, match="circular"):
        dumps(circular)
    with pytest.raises(ValueError, match="circular"):
        digest({"self": circular})
    assert dumps({"after": [1]}) == '{"after":[1]}'
