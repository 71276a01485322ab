"""JSON Schema 2020-12 for activity input/output: meta-schema checks and compiled validators.

Validators are compiled once per schema and reused; validation itself never touches I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeAlias

import jsonschema
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from activity_registry.exceptions import SchemaViolationError

__all__ = ["JSON", "MAX_REPORTED_ERRORS", "SchemaValidator", "check_schema"]

JSON: TypeAlias = Any  # the JSON boundary: dict/list/str/int/float/bool/None
META_SCHEMA_URI = "https://json-schema.org/draft/2020-12/schema"
MAX_REPORTED_ERRORS = 5


def check_schema(schema: JSON) -> None:
    """Raise ValueError naming the problem unless `schema` is a valid 2020-12 JSON Schema."""
    if not isinstance(schema, dict):
        raise ValueError(f"must be a JSON Schema object (a table), got {type(schema).__name__}")
    declared = schema.get("$schema")
    if declared is not None and declared.rstrip("#") != META_SCHEMA_URI:
        raise ValueError(
            f"$schema is {declared!r}; only JSON Schema 2020-12 ({META_SCHEMA_URI}) is supported"
        )
    try:
        Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as err:
        where = err.json_path if err.json_path != "$" else "the schema root"
        raise ValueError(f"not a valid JSON Schema 2020-12: {err.message} (at {where})") from err


def _describe(error: ValidationError) -> str:
    return f"{error.json_path}: {error.message}"


def _sorted_errors(errors: Iterable[ValidationError]) -> list[str]:
    ordered = sorted(errors, key=lambda e: (list(map(str, e.absolute_path)), e.message))
    lines = [_describe(e) for e in ordered[:MAX_REPORTED_ERRORS]]
    if len(ordered) > MAX_REPORTED_ERRORS:
        lines.append(f"... and {len(ordered) - MAX_REPORTED_ERRORS} more")
    return lines


class SchemaValidator:
    """A compiled validator for one activity schema in one direction (`input`/`output`)."""

    __slots__ = ("_validator", "activity", "direction")

    def __init__(self, schema: JSON, *, direction: str, activity: str | None = None) -> None:
        self.direction = direction
        self.activity = activity
        self._validator = Draft202012Validator(
            schema, format_checker=Draft202012Validator.FORMAT_CHECKER
        )

    def validate(self, value: JSON) -> None:
        """Raise SchemaViolationError listing the first few violations, ordered by JSON path."""
        if self._validator.is_valid(value):
            return
        errors = _sorted_errors(self._validator.iter_errors(value))
        raise SchemaViolationError(self.direction, errors, activity=self.activity)
