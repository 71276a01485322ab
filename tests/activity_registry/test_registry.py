"""Registry behaviour against a real SQLite file and real wasmtime."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import wasmtime

from activity_registry import (
    ActivityNotFoundError,
    ActivityVersion,
    CircuitBreakerPolicy,
    CorruptModuleError,
    GrantsWidenedError,
    Manifest,
    ManifestError,
    Registry,
    RetryPolicy,
    SchemaViolationError,
    VersionConflictError,
)
from tests.activity_registry.activity_files import (
    ECHO_WAT,
    NO_EXPORTS_WAT,
    SPIN_WAT,
    ActivityFactory,
    constant_wat,
)
from tests.conftest import is_postgres, run_sql
from wasm_activities import ActivityTimeout

TEXT_INPUT = {
    "type": "object",
    "properties": {"text": {"type": "string"}},
    "required": ["text"],
    "additionalProperties": False,
}


def table_rows(db_path: Path, table: str) -> list[tuple[object, ...]]:
    if is_postgres(db_path):
        [rows] = run_sql(str(db_path), f"SELECT * FROM {table}")
        return [tuple(row) for row in rows]
    with sqlite3.connect(db_path) as db:
        return list(db.execute(f"SELECT * FROM {table}"))


async def test_register_stores_version_and_bytes(
    registry: Registry, make_activity: ActivityFactory, db_path: Path
) -> None:
    manifest = make_activity(name="echo", version="1.0.0")
    result = await registry.register(manifest)

    expected_sha = hashlib.sha256(wasmtime.wat2wasm(ECHO_WAT)).hexdigest()
    assert result.created is True
    assert result.widened == []
    assert result.activity.ref == "echo@1.0.0"
    assert result.activity.sha256 == expected_sha
    assert result.activity.abi == "reactor"
    assert result.activity.description == "test activity"
    assert result.activity.input_schema == {"type": "object"}
    assert [row[0] for row in table_rows(db_path, "activity_modules")] == [expected_sha]
    migrations = table_rows(db_path, "schema_migrations")
    assert [(component, version) for component, version, _ in migrations] == [
        ("activity_registry", 1),
        ("activity_registry", 2),
        ("activity_registry", 3),
    ]


async def test_register_accepts_the_wasm_path(
    registry: Registry, make_activity: ActivityFactory
) -> None:
    manifest = make_activity()
    result = await registry.register(manifest.parent / "module.wasm")
    assert result.activity.ref == "echo@1.0.0"


async def test_same_version_same_bytes_is_a_noop(
    registry: Registry, make_activity: ActivityFactory, db_path: Path
) -> None:
    manifest = make_activity()
    first = await registry.register(manifest)
    second = await registry.register(manifest)
    assert second.created is False
    assert second.activity == first.activity
    assert len(table_rows(db_path, "activity_versions")) == 1


async def test_same_version_other_bytes_conflicts(
    registry: Registry, make_activity: ActivityFactory, db_path: Path
) -> None:
    await registry.register(make_activity(version="1.0.0"))
    manifest = make_activity(version="1.0.0", wat=constant_wat('{"a":1}'))
    with pytest.raises(VersionConflictError, match=r"echo@1\.0\.0 is already registered"):
        await registry.register(manifest)
    assert len(table_rows(db_path, "activity_modules")) == 1


async def test_same_bytes_other_definition_conflicts(
    registry: Registry, make_activity: ActivityFactory
) -> None:
    await registry.register(make_activity())
    manifest = make_activity(extra="[limits]\nmemory_mb = 64")
    with pytest.raises(VersionConflictError, match="differs in limits"):
        await registry.register(manifest)


async def test_widened_grants_are_refused_then_approved(
    registry: Registry, make_activity: ActivityFactory, db_path: Path
) -> None:
    await registry.register(
        make_activity(version="1.0.0", grants='net = ["api.example.com"]'), approve_grants=True
    )
    wider = make_activity(
        version="1.1.0", grants='net = ["api.example.com", "evil.example.net"]\nsecrets = ["KEY"]'
    )
    with pytest.raises(GrantsWidenedError) as refused:
        await registry.register(wider)
    assert refused.value.widened == ["net: +evil.example.net", "secrets: +KEY"]
    assert refused.value.previous == "the grants approved for echo"
    assert "--approve-grants" in str(refused.value)
    assert "approve_grants=True" in str(refused.value)
    assert len(table_rows(db_path, "activity_versions")) == 1

    approved = await registry.register(wider, approve_grants=True)
    assert approved.created is True
    assert approved.widened == ["net: +evil.example.net", "secrets: +KEY"]
    assert (await registry.resolve("echo")).version == "1.1.0"


async def test_narrower_grants_need_no_approval(
    registry: Registry, make_activity: ActivityFactory
) -> None:
    first = make_activity(version="1.0.0", grants='net = ["a.example.com"]')
    await registry.register(first, approve_grants=True)
    result = await registry.register(make_activity(version="1.0.1"))
    assert result.created is True
    assert result.widened == []


@pytest.mark.parametrize(
    ("module_bytes", "message"),
    [
        (b"this is not wasm at all", "is not WebAssembly"),
        (wasmtime.wat2wasm(NO_EXPORTS_WAT), "missing function export 'alloc'"),
        (wasmtime.wat2wasm(ECHO_WAT)[:20], "cannot run as abi 'reactor'"),
    ],
    ids=["not-wasm", "missing-exports", "truncated"],
)
async def test_corrupt_module_registers_nothing(
    registry: Registry,
    make_activity: ActivityFactory,
    db_path: Path,
    module_bytes: bytes,
    message: str,
) -> None:
    with pytest.raises(CorruptModuleError, match=message):
        await registry.register(make_activity(module_bytes=module_bytes))
    assert table_rows(db_path, "activity_versions") == []
    assert table_rows(db_path, "activity_modules") == []


async def test_invalid_manifest_registers_nothing(
    registry: Registry, make_activity: ActivityFactory, db_path: Path
) -> None:
    with pytest.raises(ManifestError) as caught:
        await registry.register(make_activity(extra="[limits]\nmemory_mb = 0"))
    assert caught.value.field == "limits.memory_mb"
    assert table_rows(db_path, "activity_versions") == []


async def test_resolve_picks_the_highest_match(
    registry: Registry, make_activity: ActivityFactory
) -> None:
    for version in ("1.0.0", "1.2.0", "1.10.1", "2.0.0", "2.1.0-rc.1"):
        await registry.register(make_activity(version=version))
    assert (await registry.resolve("echo")).version == "2.0.0"
    assert (await registry.resolve("echo@^1")).version == "1.10.1"
    assert (await registry.resolve("echo@~1.2")).version == "1.2.0"
    assert (await registry.resolve("echo@>=1.0 <1.5")).version == "1.2.0"
    assert (await registry.resolve("echo@1.0.0")).version == "1.0.0"
    assert (await registry.resolve("echo@*")).version == "2.0.0"
    assert (await registry.resolve("echo@^2.1.0-rc.1")).version == "2.1.0-rc.1"


async def test_resolve_as_of_reuses_a_later_read_and_sees_versions_registered_before(
    registry: Registry, make_activity: ActivityFactory, db_path: Path
) -> None:
    await registry.register(make_activity(version="1.0.0"))
    before_read = int(time.time() * 1000) - 1000  # beyond any clock-skew allowance
    assert (await registry.resolve("echo@^1", as_of_ms=before_read)).version == "1.0.0"
    async with Registry(db_path) as other_process:  # registers behind this registry's back
        await asyncio.sleep(0.002)
        await other_process.register(make_activity(version="1.1.0"))
    await asyncio.sleep(0.002)
    after_registration = int(time.time() * 1000)
    # a workflow whose clock predates the first read may reuse it (no database round trip) ...
    read_count = _count_reads(registry)
    assert (await registry.resolve("echo@^1", as_of_ms=before_read)).version == "1.0.0"
    assert read_count() == 0
    # ... one started after the registration never misses it, and the read is then shared
    assert (await registry.resolve("echo@^1", as_of_ms=after_registration)).version == "1.1.0"
    assert (await registry.resolve("echo@^1", as_of_ms=before_read)).version == "1.1.0"
    assert read_count() == 1
    # without as_of, resolve always reads
    assert (await registry.resolve("echo@^1")).version == "1.1.0"
    assert read_count() == 2


async def test_concurrent_resolves_share_one_read(
    registry: Registry, make_activity: ActivityFactory
) -> None:
    await registry.register(make_activity(version="1.0.0"))
    read_count = _count_reads(registry)
    now = int(time.time() * 1000) - 1000
    found = await asyncio.gather(*(registry.resolve("echo@^1", as_of_ms=now) for _ in range(50)))
    assert {activity.version for activity in found} == {"1.0.0"}
    assert read_count() == 1


def _count_reads(registry: Registry) -> Callable[[], int]:
    reads = 0
    original = registry._list_versions

    async def counting(name: str, started_at: int) -> object:
        nonlocal reads
        reads += 1
        return await original(name, started_at)

    registry._list_versions = counting  # type: ignore[method-assign,assignment]
    return lambda: reads


async def test_unknown_name_says_how_to_register(registry: Registry) -> None:
    with pytest.raises(ActivityNotFoundError, match="loom activity register") as caught:
        await registry.resolve("nope@^1")
    assert caught.value.registered == []


async def test_no_version_in_range_lists_registered(
    registry: Registry, make_activity: ActivityFactory
) -> None:
    await registry.register(make_activity(version="2.0.0"))
    await registry.register(make_activity(version="1.0.0"))
    with pytest.raises(ActivityNotFoundError) as caught:
        await registry.resolve("echo@^3")
    assert caught.value.registered == ["1.0.0", "2.0.0"]
    assert str(caught.value) == (
        "activity 'echo@^3' not found (no version satisfies '^3'); "
        "registered: 1.0.0, 2.0.0; register a matching version or widen the range"
    )


async def test_malformed_spec_is_a_value_error(registry: Registry) -> None:
    with pytest.raises(ValueError, match="invalid version range"):
        await registry.resolve("echo@^^1")
    with pytest.raises(ValueError, match="expected NAME or NAME@RANGE"):
        await registry.resolve("@1.0.0")


async def test_get_list_remove(
    registry: Registry, make_activity: ActivityFactory, db_path: Path
) -> None:
    await registry.register(make_activity(name="echo", version="1.0.0"))
    await registry.register(make_activity(name="echo", version="1.1.0"))
    await registry.register(make_activity(name="const", version="0.1.0", wat=constant_wat("1")))
    assert [a.ref for a in await registry.list()] == ["const@0.1.0", "echo@1.0.0", "echo@1.1.0"]
    assert (await registry.get("echo", "1.1.0")).version == "1.1.0"

    await registry.remove("echo", "1.0.0")
    assert [a.ref for a in await registry.list()] == ["const@0.1.0", "echo@1.1.0"]
    # echo 1.1.0 still uses the same bytes, so they stay; const's go with its last version.
    assert len(table_rows(db_path, "activity_modules")) == 2
    await registry.remove("const", "0.1.0")
    assert len(table_rows(db_path, "activity_modules")) == 1
    with pytest.raises(ActivityNotFoundError, match=r"registered: 1\.1\.0"):
        await registry.remove("echo", "1.0.0")
    with pytest.raises(ActivityNotFoundError):
        await registry.get("echo", "1.0.0")


async def test_run_validates_both_directions(
    registry: Registry, make_activity: ActivityFactory
) -> None:
    output_schema = {"type": "object", "required": ["count"]}
    await registry.register(make_activity(input_schema=TEXT_INPUT, output_schema=output_schema))
    activity = await registry.resolve("echo@^1")

    with pytest.raises(SchemaViolationError) as bad_input:
        await registry.run(activity, {"text": 5})
    assert bad_input.value.direction == "input"
    assert bad_input.value.errors == ["$.text: 5 is not of type 'string'"]
    assert bad_input.value.retryable is False

    # The echo module returns its input, which lacks the "count" the output schema requires.
    with pytest.raises(SchemaViolationError) as bad_output:
        await registry.run(activity, {"text": "a b"})
    assert bad_output.value.direction == "output"
    assert bad_output.value.errors == ["$: 'count' is a required property"]
    assert "fix the module" in str(bad_output.value)


async def test_run_returns_output_and_usage(
    registry: Registry, make_activity: ActivityFactory
) -> None:
    await registry.register(make_activity(name="const", wat=constant_wat('{"count": 3}')))
    activity = await registry.resolve("const")
    result = await registry.run(activity, {})
    assert result.output == {"count": 3}
    assert result.usage.output_bytes == len('{"count": 3}')


async def test_run_applies_the_version_limits(
    registry: Registry, make_activity: ActivityFactory
) -> None:
    await registry.register(
        make_activity(name="spin", wat=SPIN_WAT, extra="[limits]\ntimeout_ms = 50")
    )
    with pytest.raises(ActivityTimeout):
        await registry.run(await registry.resolve("spin"), {})


async def test_prepare_survives_a_new_registry_and_detects_tampering(
    make_activity: ActivityFactory, db_path: Path
) -> None:
    async with Registry(db_path) as first:
        activity = (await first.register(make_activity())).activity
    async with Registry(db_path) as second:
        prepared = await second.prepare(activity)
        assert prepared.sha256 == activity.sha256
    if is_postgres(db_path):
        run_sql(str(db_path), "UPDATE activity_modules SET content = '\\x0061736d'::bytea")
    else:
        with sqlite3.connect(db_path) as db:
            db.execute("UPDATE activity_modules SET content = ?", (b"\0asm tampered",))
    async with Registry(db_path) as third:
        with pytest.raises(CorruptModuleError, match="hashes to sha256:"):
            await third.prepare(activity)


async def test_native_activities_are_listed_and_validated(
    registry: Registry, make_activity: ActivityFactory
) -> None:
    native = await registry.register_native(
        "charge",
        description="charge a card",
        input_schema=TEXT_INPUT,
        output_schema={"type": "string"},
        retry=RetryPolicy(max_attempts=5),
    )
    assert native.abi == "native"
    assert native.sha256 is None
    again = await registry.register_native(
        "charge",
        description="charge a card",
        input_schema=TEXT_INPUT,
        output_schema={"type": "string"},
        retry=RetryPolicy(max_attempts=5),
    )
    assert again == native  # unchanged definition: nothing rewritten
    await registry.register(make_activity(name="echo"))
    assert [(a.ref, a.abi) for a in await registry.list()] == [
        ("charge@0.0.0", "native"),
        ("echo@1.0.0", "reactor"),
    ]
    resolved = await registry.resolve("charge")
    registry.validate_input(resolved, {"text": "x"})
    with pytest.raises(SchemaViolationError, match="output does not match"):
        registry.validate_output(resolved, 42)
    with pytest.raises(ValueError, match="is native"):
        await registry.run(resolved, {"text": "x"})


async def test_native_upsert_replaces_the_definition(registry: Registry) -> None:
    await registry.register_native("fetch", input_schema={}, output_schema={})
    updated = await registry.register_native(
        "fetch", description="v2", input_schema={"type": "object"}, output_schema={}
    )
    assert (await registry.get("fetch", "0.0.0")).description == "v2"
    assert updated.input_schema == {"type": "object"}
    with pytest.raises(ValueError, match="not a valid JSON Schema"):
        await registry.register_native("bad", input_schema={"type": 5}, output_schema={})


async def test_native_cannot_shadow_a_module_version(
    registry: Registry, make_activity: ActivityFactory
) -> None:
    await registry.register(make_activity(name="echo", version="0.0.0"))
    with pytest.raises(VersionConflictError):
        await registry.register_native("echo", input_schema={}, output_schema={})


async def test_closed_registry_refuses_work(db_path: Path) -> None:
    registry = Registry(db_path)
    await registry.close()
    await registry.close()
    with pytest.raises(Exception, match="closed"):
        await registry.list()


async def test_concurrent_registrations_of_one_version_store_it_once(
    make_activity: ActivityFactory, db_path: Path
) -> None:
    manifest = make_activity()
    registries = [Registry(db_path) for _ in range(4)]
    try:
        results = await asyncio.gather(*(r.register(manifest) for r in registries))
    finally:
        await asyncio.gather(*(r.close() for r in registries))
    assert sorted(r.created for r in results) == [False, False, False, True]
    assert len(table_rows(db_path, "activity_versions")) == 1


async def test_shares_schema_migrations_with_the_engine(
    make_activity: ActivityFactory, db_path: Path
) -> None:
    engine_table = (
        "CREATE TABLE schema_migrations (component TEXT, version INTEGER,"
        " applied_at INTEGER, PRIMARY KEY(component, version))",
        "INSERT INTO schema_migrations VALUES ('loom', 1, 0)",
    )
    if is_postgres(db_path):
        run_sql(str(db_path), *(s.replace("INTEGER", "BIGINT") for s in engine_table))
    else:
        with sqlite3.connect(db_path) as db:
            for statement in engine_table:
                db.execute(statement)
    for _ in range(2):  # reopening migrates nothing twice
        async with Registry(db_path) as registry:
            await registry.register(make_activity())
    rows = sorted((c, v) for c, v, _ in table_rows(db_path, "schema_migrations"))
    assert rows == [
        ("activity_registry", 1),
        ("activity_registry", 2),
        ("activity_registry", 3),
        ("loom", 1),
    ]
    if is_postgres(db_path):
        return
    with sqlite3.connect(db_path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_errors_serialise_like_sandbox_errors() -> None:
    error = SchemaViolationError("input", ["$.text: 5 is not of type 'string'"], activity="a@1.0.0")
    assert error.to_json() == {
        "type": "SchemaViolationError",
        "message": str(error),
        "details": {
            "direction": "input",
            "errors": ["$.text: 5 is not of type 'string'"],
            "activity": "a@1.0.0",
        },
    }
    assert ActivityNotFoundError("x@^1", ["2.0.0"]).to_json()["details"] == {
        "spec": "x@^1",
        "registered": ["2.0.0"],
    }


def test_activity_version_rejects_unknown_abi() -> None:
    with pytest.raises(ValueError, match="abi 'wasi' is not one of"):
        ActivityVersion(
            name="x",
            version="1.0.0",
            abi="wasi",
            sha256=None,
            input_schema={},
            output_schema={},
            registered_at=0,
        )


async def test_oversized_module_is_refused(
    db_path: Path, make_activity: ActivityFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = make_activity()  # the echo module is ~100 bytes
    async with Registry(db_path, max_module_bytes=64) as small:
        with pytest.raises(ManifestError) as refused:
            await small.register(manifest)
        assert refused.value.field == "module"
        assert "over the 64-byte limit" in str(refused.value)
        assert "LOOM_MAX_MODULE_BYTES" in str(refused.value)
        assert await small.list() == []

    monkeypatch.setenv("LOOM_MAX_MODULE_BYTES", "64")
    async with Registry(db_path) as from_env:
        assert from_env.max_module_bytes == 64
        with pytest.raises(ManifestError, match="over the 64-byte limit"):
            await from_env.register(manifest)
    monkeypatch.setenv("LOOM_MAX_MODULE_BYTES", "lots")
    with pytest.raises(ValueError, match="LOOM_MAX_MODULE_BYTES='lots'"):
        Registry(db_path)
    monkeypatch.delenv("LOOM_MAX_MODULE_BYTES")
    async with Registry(db_path) as default:
        assert default.max_module_bytes == 64 * 1024 * 1024
        assert (await default.register(manifest)).created is True


async def test_circuit_breaker_section_is_parsed_and_stored(db_path, make_activity) -> None:
    path = make_activity(
        extra="[circuit_breaker]\nfailures = 4\nwindow_ms = 10000\nreset_after_ms = 2500"
    )
    async with Registry(db_path) as registry:
        await registry.register(path)
        stored = await registry.get("echo", "1.0.0")
    assert stored.circuit_breaker == CircuitBreakerPolicy(
        failures=4, window_ms=10_000, reset_after_ms=2_500
    )


def test_circuit_breaker_section_rejects_bad_values(make_activity) -> None:
    bad = make_activity(extra="[circuit_breaker]\nfailures = 0")
    with pytest.raises(ManifestError, match="failures"):
        Manifest.load(bad)
    typo = make_activity(version="1.0.1", extra="[circuit_breaker]\nfailure = 3")
    with pytest.raises(ManifestError, match="failure"):
        Manifest.load(typo)
