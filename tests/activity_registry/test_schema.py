"""Schemas are self-contained and linear-time: no `$ref` leaves the document, no regex backtracks,
no schema file is read without bound (red-team issue 12, findings 1-3)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from activity_registry import ManifestError, Registry, RegistryError, SchemaViolationError
from activity_registry.manifest import MAX_SCHEMA_BYTES, Manifest
from activity_registry.schema import SchemaValidator, check_schema
from tests.activity_registry.activity_files import ActivityFactory
from tests.wasm_activities.conftest import LoopbackServer

HOSTILE = "a" * 30 + "!"  # `^(a+)+$` backtracks 2**30 times on this under Python's `re`


def remote_schema(server: LoopbackServer) -> dict[str, Any]:
    return {"type": "object", "properties": {"x": {"$ref": f"http://{server.host}/s.json"}}}


async def test_remote_ref_is_refused_at_registration_and_never_fetched(
    registry: Registry, make_activity: ActivityFactory, http_server: LoopbackServer
) -> None:
    manifest = make_activity(input_schema=remote_schema(http_server))

    with pytest.raises(ManifestError) as refused:
        await registry.register(manifest)

    assert refused.value.field == "input_schema"
    assert f"$ref 'http://{http_server.host}/s.json' refers outside the schema" in str(
        refused.value
    )
    assert "$defs" in str(refused.value)  # says how to fix it
    assert await registry.list() == []
    assert http_server.connections == 0


@pytest.mark.parametrize(
    "ref", ["other.json", "file:///etc/passwd", "https://json-schema.org/draft/2020-12/schema"]
)
def test_refs_to_files_and_other_documents_are_refused(ref: str) -> None:
    with pytest.raises(ValueError, match="refers outside the schema"):
        check_schema({"$ref": ref})


def test_ref_pointing_nowhere_is_refused() -> None:
    with pytest.raises(ValueError, match=r"'#/\$defs/missing' points nowhere"):
        check_schema({"$ref": "#/$defs/missing"})


def test_local_refs_resolve_and_validate() -> None:
    schema = {
        "$id": "https://example.com/root.json",
        "$defs": {"word": {"type": "string"}},
        "definitions": {"count": {"type": "integer"}},
        "type": "object",
        "properties": {
            "a": {"$ref": "#/$defs/word"},
            "b": {"$ref": "#/definitions/count"},
            "c": {"$ref": "https://example.com/root.json#/$defs/word"},
            "$ref": {"type": "boolean"},  # a property named "$ref" is not a reference
        },
    }
    check_schema(schema)
    validator = SchemaValidator(schema, direction="input")
    validator.validate({"a": "x", "b": 1, "c": "y", "$ref": True})
    with pytest.raises(SchemaViolationError):
        validator.validate({"b": "not a count"})


def test_validation_of_a_stored_remote_ref_fails_without_fetching(
    http_server: LoopbackServer,
) -> None:
    # As if stored before registration refused remote refs: validation must not fetch either,
    # and the failure is final (not retryable), so a task does not retry it forever.
    validator = SchemaValidator(remote_schema(http_server), direction="input", activity="x@1")
    with pytest.raises(RegistryError, match="cannot be applied") as failed:
        validator.validate({"x": 1})
    assert failed.value.retryable is False
    assert http_server.connections == 0


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "string", "pattern": "^(a+)+$"},
        {"type": "object", "patternProperties": {"^(a+)+$": {"type": "integer"}}},
        {
            "type": "object",
            "patternProperties": {"^(a+)+$": {}},
            "additionalProperties": False,
        },
        {"type": "object", "propertyNames": {"pattern": "^(a+)+$"}},
    ],
)
async def test_hostile_regex_input_validates_in_linear_time(
    registry: Registry, make_activity: ActivityFactory, schema: dict[str, Any]
) -> None:
    await registry.register(make_activity(input_schema={"type": "object"}, output_schema=schema))
    activity = await registry.resolve("echo")
    hostile: Any = HOSTILE if schema["type"] == "string" else {HOSTILE: "not an integer"}

    started = time.perf_counter()
    with contextlib.suppress(SchemaViolationError):  # matching or not, it must end quickly
        registry.validate_output(activity, hostile)
    assert time.perf_counter() - started < 1.0  # Python's `re` takes minutes on this input


@pytest.mark.parametrize("pattern", [r"(a)\1", "(?=a)b", "(?<!a)b"])
def test_regexes_re2_cannot_run_are_refused(folder_with: Any, pattern: str) -> None:
    manifest = folder_with({"type": "string", "pattern": pattern})
    with pytest.raises(ManifestError) as refused:
        Manifest.load(manifest)
    assert refused.value.field == "input_schema"
    assert f"regex {pattern!r} is not supported" in str(refused.value)
    assert "backreferences or lookaround" in str(refused.value)


def test_pattern_properties_with_unevaluated_properties_is_refused() -> None:
    with pytest.raises(ValueError, match="use additionalProperties instead"):
        check_schema({"patternProperties": {"^a": {}}, "unevaluatedProperties": False})


@pytest.fixture
def folder_with(make_activity: ActivityFactory) -> Any:
    """Write an activity and replace its input schema file with `schema` (or any text)."""

    def write(schema: Any) -> Path:
        manifest = make_activity()
        text = schema if isinstance(schema, str) else json.dumps(schema)
        (manifest.parent / "in.json").write_text(text)
        return manifest

    return write


def test_schema_path_to_a_device_is_refused_quickly(folder_with: Any) -> None:
    manifest = folder_with("{}")
    text = manifest.read_text().replace('input_schema = "in.json"', 'input_schema = "/dev/zero"')
    manifest.write_text(text)

    started = time.perf_counter()
    with pytest.raises(ManifestError) as refused:
        Manifest.load(manifest)
    assert time.perf_counter() - started < 1.0
    assert refused.value.field == "input_schema"
    assert "/dev/zero is not a regular file" in str(refused.value)


def test_schema_path_to_a_fifo_is_refused_without_blocking(folder_with: Any) -> None:
    manifest = folder_with("{}")
    (manifest.parent / "in.json").unlink()
    os.mkfifo(manifest.parent / "in.json")  # opening it for reading would wait for a writer
    with pytest.raises(ManifestError, match="is not a regular file"):
        Manifest.load(manifest)


def test_oversized_schema_file_is_refused(folder_with: Any) -> None:
    manifest = folder_with(" " * MAX_SCHEMA_BYTES + "{}")
    with pytest.raises(ManifestError) as refused:
        Manifest.load(manifest)
    assert refused.value.field == "input_schema"
    assert f"over the {MAX_SCHEMA_BYTES:,}-byte limit" in str(refused.value)


async def test_a_small_document_is_validated_without_a_thread_hop(
    registry: Registry, make_activity: ActivityFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    schema = {"type": "object", "properties": {"word": {"type": "string", "pattern": "^[a-z]+$"}}}
    await registry.register(make_activity(output_schema=schema))
    activity = await registry.resolve("echo")
    hops: list[object] = []
    real = asyncio.get_running_loop().run_in_executor

    def counted(executor: object, fn: Any, *args: Any) -> Any:
        hops.append(fn)
        return real(executor, fn, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(asyncio.get_running_loop(), "run_in_executor", counted)
    await registry.validate(activity, {"word": "small"}, direction="output")
    with pytest.raises(SchemaViolationError):
        await registry.validate(activity, {"word": "Small"}, direction="output")
    assert hops == []
    # Past the budget, in values or in text, the document goes to a validation thread.
    await registry.validate(activity, {"word": "a" * 300_000}, direction="output")
    await registry.validate(activity, {"n": list(range(300))}, direction="output")
    assert len(hops) == 2


async def test_validate_runs_off_the_event_loop(
    registry: Registry, make_activity: ActivityFactory
) -> None:
    schema = {"type": "array", "items": {"type": "string", "pattern": "^[a-z]+$"}}
    await registry.register(make_activity(output_schema=schema))
    activity = await registry.resolve("echo")
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    ticker = asyncio.get_running_loop().create_task(tick())
    try:
        # Validated on the loop, this would return before the ticker ever ran.
        await registry.validate(activity, ["word"] * 1_000, direction="output")
        assert ticks > 0
        with pytest.raises(SchemaViolationError):
            await registry.validate(activity, ["Word"], direction="output")
    finally:
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
