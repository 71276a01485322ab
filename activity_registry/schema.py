"""JSON Schema 2020-12 for activity input/output: registration checks and compiled validators.

A schema is accepted only if it is self-contained (every `$ref` resolves inside the document)
and every regex in it compiles under RE2, so validation never does I/O and runs in linear time.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeAlias

import jsonschema
import re2
import referencing
import referencing.exceptions
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError
from jsonschema.protocols import Validator
from referencing.jsonschema import DRAFT202012

from activity_registry.exceptions import RegistryError, SchemaViolationError

if TYPE_CHECKING:
    from referencing._core import Resolver

__all__ = ["JSON", "MAX_REPORTED_ERRORS", "SchemaValidator", "check_schema", "regex_search"]

JSON: TypeAlias = Any  # the JSON boundary: dict/list/str/int/float/bool/None
META_SCHEMA_URI = "https://json-schema.org/draft/2020-12/schema"
MAX_REPORTED_ERRORS = 5
_REF_KEYWORDS = ("$ref", "$dynamicRef")
# jsonschema's `Validator` protocol lacks the `descend()` its own keyword functions call.
_KeywordValidator: TypeAlias = Any


def _refuse_retrieval(uri: str) -> referencing.Resource[JSON]:
    """The registry's only retriever: a schema's references never leave the schema.

    jsonschema's default retriever would fetch http(s) URIs on the calling thread, with no
    timeout, and let a remote document change what an immutable version accepts.
    """
    raise referencing.exceptions.NoSuchResource(ref=uri)  # type: ignore[call-arg]  # attrs init


_NO_RETRIEVAL = referencing.Registry(retrieve=_refuse_retrieval)  # type: ignore[call-arg]  # stubs omit `retrieve`


@functools.lru_cache(maxsize=4096)
def _compile(pattern: str) -> Any:  # re2 ships no type information
    options = re2.Options()
    options.log_errors = False  # RE2 would print every refused pattern to stderr
    return re2.compile(pattern, options)


def regex_search(pattern: str, text: str) -> bool:
    """Whether RE2 finds `pattern` in `text`: linear time, unlike `re`'s backtracking.

    Raises:
        ValueError: RE2 cannot compile `pattern` (backreferences, lookaround, ...).
    """
    try:
        compiled = _compile(pattern)
    except re2.error as err:
        reason = err.args[0].decode() if isinstance(err.args[0], bytes) else str(err)
        raise ValueError(
            f"regex {pattern!r} is not supported: {reason} (patterns run on RE2, which has no "
            "backreferences or lookaround; rewrite it without them)"
        ) from err
    return compiled.search(text) is not None


def _pattern(
    validator: _KeywordValidator, pattern: str, instance: JSON, schema: JSON
) -> Iterator[Any]:
    if validator.is_type(instance, "string") and not regex_search(pattern, instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


def _pattern_properties(
    validator: _KeywordValidator, pattern_properties: dict[str, JSON], instance: JSON, schema: JSON
) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in pattern_properties.items():
        for key, value in instance.items():
            if regex_search(pattern, key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _additional_properties(
    validator: _KeywordValidator, additional: JSON, instance: JSON, schema: JSON
) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    declared = schema.get("properties", {})
    patterns = list(schema.get("patternProperties", {}))
    extras = sorted(
        key
        for key in instance
        if key not in declared and not any(regex_search(p, key) for p in patterns)
    )
    if validator.is_type(additional, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], additional, path=extra)
    elif not additional and extras:
        listed = ", ".join(repr(extra) for extra in extras)
        if patterns:
            yield ValidationError(f"{listed} do(es) not match any of the regexes: {patterns}")
        else:
            yield ValidationError(f"Additional properties are not allowed ({listed} unexpected)")


# The three keywords whose matching jsonschema does with `re`; everything else is unchanged.
_Validator: Any = jsonschema.validators.extend(  # type: ignore[no-untyped-call]  # untyped in stubs
    Draft202012Validator,
    validators={
        "pattern": _pattern,
        "patternProperties": _pattern_properties,
        "additionalProperties": _additional_properties,
    },
)


def check_schema(schema: JSON) -> None:
    """Raise ValueError naming the problem unless `schema` is a valid, self-contained 2020-12
    JSON Schema whose regexes RE2 compiles.

    Refused: `$ref`s that leave the document (remote URLs, other files), references that point
    nowhere, regexes RE2 cannot run, and `unevaluatedProperties` together with
    `patternProperties` (jsonschema matches those with `re`, whose time is unbounded).
    """
    if not isinstance(schema, dict):
        raise ValueError(f"must be a JSON Schema object (a table), got {type(schema).__name__}")
    declared = schema.get("$schema")
    if declared is not None and str(declared).rstrip("#") != META_SCHEMA_URI:
        raise ValueError(
            f"$schema is {declared!r}; only JSON Schema 2020-12 ({META_SCHEMA_URI}) is supported"
        )
    try:
        Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as err:
        where = err.json_path if err.json_path != "$" else "the schema root"
        raise ValueError(f"not a valid JSON Schema 2020-12: {err.message} (at {where})") from err
    resource = DRAFT202012.create_resource(schema)
    try:
        keywords = _check_subschemas(_NO_RETRIEVAL.resolver_with_root(resource), resource)
    except RecursionError as err:
        raise ValueError("the schema is nested too deeply; flatten it using $defs") from err
    if {"unevaluatedProperties", "patternProperties"} <= keywords:
        raise ValueError(
            "unevaluatedProperties cannot be combined with patternProperties (their regexes "
            "would run without a time bound); use additionalProperties instead"
        )


def _check_subschemas(resolver: Resolver[JSON], resource: referencing.Resource[JSON]) -> set[str]:
    """Check the references and regexes of `resource` and all its subschemas; return the
    keywords seen."""
    contents = resource.contents
    seen: set[str] = set()
    if isinstance(contents, dict):
        seen.update(contents)
        for keyword in _REF_KEYWORDS:
            ref = contents.get(keyword)
            if isinstance(ref, str):
                _check_reference(resolver, keyword, ref)
        patterns = list(contents.get("patternProperties") or {})
        if isinstance(contents.get("pattern"), str):
            patterns.append(contents["pattern"])
        for pattern in patterns:
            regex_search(pattern, "")  # compiles it, or raises ValueError naming it
    for subresource in resource.subresources():
        seen |= _check_subschemas(resolver.in_subresource(subresource), subresource)
    return seen


def _check_reference(resolver: Resolver[JSON], keyword: str, ref: str) -> None:
    try:
        resolver.lookup(ref)
    except referencing.exceptions.Unresolvable as err:
        inside = (referencing.exceptions.PointerToNowhere, referencing.exceptions.NoSuchAnchor)
        if isinstance(err, inside):
            problem = "points nowhere inside the schema"
        else:
            problem = "refers outside the schema (remote URLs and other files are never fetched)"
        raise ValueError(
            f"{keyword} {ref!r} {problem}; put the referenced schema under $defs and refer to "
            "it as '#/$defs/NAME'"
        ) from err


def _describe(error: ValidationError) -> str:
    return f"{error.json_path}: {error.message}"


def _sorted_errors(errors: Iterable[ValidationError]) -> list[str]:
    ordered = sorted(errors, key=lambda e: (list(map(str, e.absolute_path)), e.message))
    lines = [_describe(e) for e in ordered[:MAX_REPORTED_ERRORS]]
    if len(ordered) > MAX_REPORTED_ERRORS:
        lines.append(f"... and {len(ordered) - MAX_REPORTED_ERRORS} more")
    return lines


class SchemaValidator:
    """A compiled validator for one activity schema in one direction (`input`/`output`).

    Validation does no I/O (references resolve only inside the schema) and matches regexes
    with RE2, so its time is linear in the document's size.
    """

    __slots__ = ("_validator", "activity", "direction")

    def __init__(self, schema: JSON, *, direction: str, activity: str | None = None) -> None:
        self.direction = direction
        self.activity = activity
        self._validator: Validator = _Validator(
            schema, registry=_NO_RETRIEVAL, format_checker=Draft202012Validator.FORMAT_CHECKER
        )

    def validate(self, value: JSON) -> None:
        """Raise SchemaViolationError listing the first few violations, ordered by JSON path.

        Raises:
            SchemaViolationError: `value` does not match.
            RegistryError: the schema cannot be applied (a reference leaving the schema or an
                RE2-incompatible regex, stored before registration refused them).
        """
        try:
            if self._validator.is_valid(value):
                return
            errors = _sorted_errors(self._validator.iter_errors(value))
        except (referencing.exceptions.Unresolvable, ValueError) as err:
            whose = f" of {self.activity}" if self.activity else ""
            raise RegistryError(
                f"the {self.direction} schema{whose} cannot be applied: {err}; register a new "
                "version with a self-contained, RE2-compatible schema",
                activity=self.activity,
                direction=self.direction,
            ) from err
        raise SchemaViolationError(self.direction, errors, activity=self.activity)
