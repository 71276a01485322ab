"""The activity registry: register, resolve, list, remove, prepare, validate and run versions.

Each operation is one hop to the registry's database thread, which runs it as one transaction.
Knows nothing about workflows or replay; the engine pins what `resolve` returns in its history.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import re
import sqlite3
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Literal, TypeVar

import asyncpg
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode
from pydantic import BaseModel, ConfigDict

from activity_registry.approval import approved_grants, describe_baseline
from activity_registry.exceptions import (
    ActivityNotFoundError,
    CorruptModuleError,
    GrantsWidenedError,
    ManifestError,
    RegistryError,
    VersionConflictError,
)
from activity_registry.manifest import (
    DEFINITION_FIELDS,
    ActivityVersion,
    CircuitBreakerPolicy,
    Manifest,
    RetryPolicy,
    read_regular_file,
)
from activity_registry.module_store import (
    Decision,
    ModuleStore,
    PostgresModuleStore,
    is_postgres_url,
    now_ms,
)
from activity_registry.schema import JSON, SchemaValidator, check_schema
from activity_registry.version_range import VersionRange, parse_version
from wasm_activities import (
    Abi,
    Grants,
    InvalidModule,
    PreparedModule,
    RunResult,
    SandboxError,
    SandboxRuntime,
    get_runtime,
)

__all__ = [
    "DEFAULT_MAX_MODULE_BYTES",
    "MAX_MODULE_BYTES_ENV",
    "RegistrationResult",
    "Registry",
    "parse_spec",
]

_T = TypeVar("_T")
_SPEC_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")
_WASM_MAGIC = b"\0asm"
DEFAULT_MAX_MODULE_BYTES = 64 << 20
"""Largest module `register` accepts (64 MiB) unless `max_module_bytes` or the env var says.

Every worker loads and compiles module bytes from the database, so an unbounded module is an
unbounded cost on every host."""
MAX_MODULE_BYTES_ENV = "LOOM_MAX_MODULE_BYTES"
VALIDATION_THREADS = 2
"""Threads that validate activity input/output for `Registry.run` (jsonschema holds the GIL,
so more would not run faster; two keep one large document from queueing every other call)."""
INLINE_VALIDATION_BUDGET = 256
"""Documents within this size (one per JSON value, one per KiB of text) are validated on the
calling thread: a hop to a validation thread and back took 150 µs where checking `{"n": 1}`
took 7 (twice per WASM call, more than the sandbox call itself). Telling the size costs at
most ~60 µs, for a document at the budget."""
# Fields that define a version; two registrations of one name@version must agree on all of them.
_DEFINING_FIELDS = (
    "abi",
    "sha256",
    "description",
    "input_schema",
    "output_schema",
    "limits",
    "grants",
    "retry",
    "circuit_breaker",
)


class RegistrationResult(BaseModel):
    """The outcome of `Registry.register`.

    Attributes:
        activity: The stored version (the earlier one when this was a no-op).
        created: False when the same name@version with the same bytes was already registered.
        widened: Grants beyond those already approved for the name (a new name: beyond none),
            approved with `approve_grants=True`, since the version was stored.
    """

    model_config = ConfigDict(frozen=True)

    activity: ActivityVersion
    created: bool
    widened: list[str]


@functools.lru_cache(maxsize=1024)
def parse_spec(spec: str) -> tuple[str, str | None]:
    """Split `name@range` into (name, range); the range is None for a bare name (= latest).

    Raises:
        ValueError: if the name is malformed or the range does not parse.
    """
    name, sep, version_range = spec.strip().partition("@")
    if not _SPEC_NAME.match(name):
        raise ValueError(f"invalid activity spec {spec!r}: expected NAME or NAME@RANGE")
    if not sep:
        return name, None
    VersionRange.parse(version_range)  # raise here, naming the spec, rather than at lookup
    return name, version_range


def _database_path(database: str | os.PathLike[str]) -> str:
    text = os.fspath(database)
    if text.startswith("sqlite:///"):
        return text.removeprefix("sqlite:///")
    if "://" in text and not is_postgres_url(text):
        raise ValueError(
            f"unsupported database {text!r}: use a SQLite file path or postgresql://..."
        )
    return text


def _choose(spec: str, version_range: str | None, versions: list[str]) -> str:
    """The version of `versions` that `spec` resolves to; ActivityNotFoundError if none."""
    if not versions:
        raise ActivityNotFoundError(spec)
    if version_range is None:
        return _latest(versions)
    chosen = VersionRange.parse(version_range).best(versions)
    if chosen is None:
        registered = sorted(versions, key=parse_version)
        raise ActivityNotFoundError(
            spec, registered, reason=f"no version satisfies '{version_range}'"
        )
    return chosen


@dataclass(slots=True)
class _Listing:
    """An activity's versions as read at `read_at_ms`, and the specs resolved against them."""

    read_at_ms: int
    versions: dict[str, ActivityVersion]
    chosen: dict[str, str] = field(default_factory=dict)


def _sort_key(activity: ActivityVersion) -> tuple[str, object]:
    return activity.name, parse_version(activity.version)


def _latest(versions: list[str]) -> str:
    """The highest release, or the highest prerelease when there is no release yet."""
    parsed = sorted(versions, key=parse_version, reverse=True)
    releases = [v for v in parsed if parse_version(v).prerelease is None]
    return (releases or parsed)[0]


def _differences(old: ActivityVersion, new: ActivityVersion) -> list[str]:
    return [field for field in _DEFINING_FIELDS if getattr(old, field) != getattr(new, field)]


def _registration_check(
    activity: ActivityVersion, *, approve_grants: bool, widened_out: list[str]
) -> Decision:
    """Build the decision `ModuleStore.register` runs inside its write transaction."""

    def decide(stored: list[ActivityVersion], recorded: Grants | None) -> ActivityVersion | None:
        for existing in stored:
            if existing.version != activity.version:
                continue
            differences = _differences(existing, activity)
            if not differences:
                return existing
            raise VersionConflictError(
                activity.ref,
                existing=_describe(existing),
                attempted=f"{_describe(activity)} (differs in {', '.join(differences)})",
            )
        # A first version is held to SAFE_GRANTS (nothing), a later one (even after every
        # version was removed) to all grants approved for the name so far.
        widened = activity.grants.widened_from(approved_grants(recorded, stored))
        if widened and not approve_grants:
            baseline = describe_baseline(activity.name, recorded, stored)
            raise GrantsWidenedError(activity.ref, baseline, widened)
        widened_out.extend(widened)
        return None

    return decide


def _describe(activity: ActivityVersion) -> str:
    return "native code" if activity.sha256 is None else f"sha256:{activity.sha256}"


class Registry:
    """Versioned activities stored in the engine's SQLite database.

    Use as `async with Registry(path) as registry:` or call `await close()`. The registry keeps
    its own connection and one database thread; blocking work (SQLite, file reads, module
    compilation) runs there, one hop per operation, so the event loop never blocks.

    Args:
        database: SQLite file path (or `sqlite:///path`), the same file the engine uses.
        runtime: The sandbox runtime to prepare and run modules with; default `get_runtime()`.
        max_module_bytes: Largest module `register` accepts; default the `LOOM_MAX_MODULE_BYTES`
            environment variable, else `DEFAULT_MAX_MODULE_BYTES` (64 MiB).

    Raises:
        ValueError: `max_module_bytes` (or the environment variable) is not a positive integer.
    """

    def __init__(
        self,
        database: str | os.PathLike[str],
        *,
        runtime: SandboxRuntime | None = None,
        max_module_bytes: int | None = None,
    ) -> None:
        self._path = _database_path(database)
        self.max_module_bytes = _max_module_bytes(max_module_bytes)
        self._runtime = runtime
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="loom-registry")
        # Validation is CPU work proportional to the document (up to megabytes): off the loop,
        # and not on the database thread, where it would queue behind (and delay) every read.
        self._validation_executor = ThreadPoolExecutor(
            max_workers=VALIDATION_THREADS, thread_name_prefix="loom-validate"
        )
        self._store: ModuleStore | None = None
        self._prepared: dict[str, PreparedModule] = {}
        self._versions: dict[tuple[str, str], ActivityVersion] = {}
        self._validators: dict[tuple[str, str, int, str], SchemaValidator] = {}
        self._listings: dict[str, _Listing] = {}
        self._reading: dict[str, tuple[int, asyncio.Task[_Listing]]] = {}
        # another host's clock may run behind ours: a version it registered "at" T may carry
        # a later T here; one SQLite file is only ever shared by processes on one host
        self._clock_skew_ms = 250 if is_postgres_url(self._path) else 0
        self._closed = False

    async def __aenter__(self) -> Registry:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def runtime(self) -> SandboxRuntime:
        """The sandbox runtime modules are prepared and run with."""
        if self._runtime is None:
            self._runtime = get_runtime()
        return self._runtime

    async def _call(self, operation: Callable[[ModuleStore], _T]) -> _T:
        if self._closed:
            raise RegistryError("the registry is closed; create a new Registry")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, partial(self._on_thread, operation))

    def _on_thread(self, operation: Callable[[ModuleStore], _T]) -> _T:
        if self._store is None:
            try:
                is_postgres = is_postgres_url(self._path)
                self._store = (PostgresModuleStore if is_postgres else ModuleStore)(self._path)
            except (sqlite3.Error, OSError, asyncpg.PostgresError) as err:
                raise RegistryError(
                    f"cannot open database {self._path!r}: {err}; check --db / LOOM_DATABASE",
                    database=self._path,
                ) from err
        return operation(self._store)

    # -- registration ------------------------------------------------------------------------

    async def register(
        self, path: str | os.PathLike[str], *, approve_grants: bool = False
    ) -> RegistrationResult:
        """Register the manifest at `path` (or the .wasm beside it); all or nothing.

        The manifest and schemas are validated, the module compiled and its exports checked
        for the ABI, then version row and module bytes are stored in one transaction.
        Registering the same name@version with the same bytes again is a no-op
        (`created=False`).

        Raises:
            ManifestError: the manifest or a schema is invalid (names the field).
            CorruptModuleError: the module is not wasm or lacks the ABI's exports.
            VersionConflictError: name@version exists with other bytes or another definition.
            GrantsWidenedError: without `approve_grants`, the version asks for net, secrets,
                env or fs grants not yet approved for its name. A new name's baseline is no
                grants; approvals accumulate per name and survive `remove`.
        """
        result = await self._call(partial(self._register, Path(path), approve_grants))
        self._listings.pop(result.activity.name, None)
        return result

    def _register(self, path: Path, approve_grants: bool, store: ModuleStore) -> RegistrationResult:
        manifest = Manifest.load(path)
        content = _read_module(manifest, self.max_module_bytes)
        sha256 = hashlib.sha256(content).hexdigest()
        prepared = self._prepare_bytes(content, manifest.abi, sha256, source=manifest.module_path)
        _check_initial_memory(manifest, prepared)
        self._prepared[sha256] = prepared
        activity = ActivityVersion(
            **{field: getattr(manifest, field) for field in DEFINITION_FIELDS},
            abi=manifest.abi,
            sha256=sha256,
            registered_at=now_ms(),
        )
        widened: list[str] = []
        decide = _registration_check(activity, approve_grants=approve_grants, widened_out=widened)
        outcome = store.register(activity, content, decide)
        return RegistrationResult(
            activity=outcome.activity, created=outcome.created, widened=widened
        )

    def _prepare_bytes(
        self, content: bytes, abi: str, sha256: str, *, source: Path | None = None
    ) -> PreparedModule:
        """`source`: the file the bytes came from, named in errors (a sha256 alone does not
        tell a user which of their files is wrong)."""
        shown = f"module {source} (sha256 {sha256[:12]})" if source else f"module {sha256[:12]}"
        if not content.startswith(_WASM_MAGIC):
            raise CorruptModuleError(
                f"{shown} is not WebAssembly (no \\0asm header); "
                "point `module` at a compiled .wasm file",
                sha256=sha256,
            )
        try:
            return self.runtime.prepare(content, Abi(abi))
        except InvalidModule as err:
            raise CorruptModuleError(
                f"{shown} cannot run as abi '{abi}': {err}", sha256=sha256
            ) from err

    async def register_native(
        self,
        name: str,
        *,
        version: str = "0.0.0",
        description: str = "",
        input_schema: dict[str, JSON],
        output_schema: dict[str, JSON],
        retry: RetryPolicy | None = None,
        circuit_breaker: CircuitBreakerPolicy | None = None,
    ) -> ActivityVersion:
        """Record a native (Python) activity so it is listed and validated like a module.

        Upserts: native code is defined by the worker, so the latest definition wins.

        Raises:
            ValueError: the name, version or a schema is invalid.
            VersionConflictError: name@version is already a WebAssembly activity.
        """
        if not _SPEC_NAME.match(name):
            raise ValueError(f"invalid native activity name {name!r} (no '@' or spaces)")
        parse_version(version)
        for where, schema in (("input_schema", input_schema), ("output_schema", output_schema)):
            try:
                check_schema(schema)
            except ValueError as err:
                raise ValueError(f"native activity {name!r}: {where}: {err}") from err
        activity = ActivityVersion(
            name=name,
            version=version,
            abi="native",
            sha256=None,
            description=description,
            input_schema=input_schema,
            output_schema=output_schema,
            retry=retry or RetryPolicy(),
            circuit_breaker=circuit_breaker,
            registered_at=now_ms(),
        )

        def decide(stored: list[ActivityVersion], _: Grants | None) -> ActivityVersion | None:
            for existing in stored:
                if existing.version != version:
                    continue
                if not existing.is_native:
                    raise VersionConflictError(
                        activity.ref, existing=_describe(existing), attempted="native code"
                    )
                return existing if not _differences(existing, activity) else None
            return None

        outcome = await self._call(lambda store: store.register(activity, None, decide))
        self._versions[(name, version)] = outcome.activity
        self._listings.pop(name, None)
        return outcome.activity

    # -- lookup --------------------------------------------------------------------------------

    async def resolve(self, spec: str, *, as_of_ms: int | None = None) -> ActivityVersion:
        """The highest registered version matching `spec`.

        `name` alone means the latest release; `name@1.2.3`, `name@^1`, `name@~1.2`,
        `name@>=1.0 <2`, `name@1.x` and `name@*` follow npm's range rules.

        `as_of_ms` (wall clock, ms): a list of versions read from the database after that
        moment already holds every version registered before it, so it is reused instead of
        read again. A worker passes the calling workflow's clock: a workflow started after a
        registration always sees it, while workflows started before a read share that read
        (one database round trip per burst, not per workflow). Without it, always read.

        Raises:
            ValueError: the spec does not parse.
            ActivityNotFoundError: unknown name, or no version satisfies the range.
        """
        name, version_range = parse_spec(spec)
        since = None if as_of_ms is None else as_of_ms + self._clock_skew_ms
        listing = self._listings.get(name)
        if listing is None or since is None or listing.read_at_ms <= since:
            listing = await self._read_listing(name, since)
        chosen = listing.chosen.get(spec)
        if chosen is None:
            chosen = listing.chosen[spec] = _choose(spec, version_range, list(listing.versions))
        return listing.versions[chosen]

    async def _read_listing(self, name: str, since: int | None) -> _Listing:
        """Read `name`'s versions, joining a read already under way that began after `since`."""
        loop = asyncio.get_running_loop()
        pending = self._reading.get(name)
        if pending is not None and since is not None:
            started_at, reading = pending
            if started_at > since and reading.get_loop() is loop:
                return await asyncio.shield(reading)
        started_at = int(time.time() * 1000)
        reading = loop.create_task(self._list_versions(name, started_at))
        self._reading[name] = (started_at, reading)
        try:
            return await asyncio.shield(reading)
        finally:
            if self._reading.get(name, (0, None))[1] is reading:
                del self._reading[name]

    async def _list_versions(self, name: str, started_at: int) -> _Listing:
        stored = await self._call(lambda store: store.versions(name))
        listing = _Listing(started_at, {v.version: v for v in stored})
        current = self._listings.get(name)
        if current is None or current.read_at_ms < started_at:
            self._listings[name] = listing
        for activity in stored:
            self._versions[(name, activity.version)] = activity
        return listing

    async def get(self, name: str, version: str) -> ActivityVersion:
        """Exactly name@version (cached: versions are immutable).

        Raises:
            ActivityNotFoundError: not registered (lists the versions that are).
        """
        cached = self._versions.get((name, version))
        if cached is not None:
            return cached

        def lookup(store: ModuleStore) -> tuple[ActivityVersion | None, list[str]]:
            found = store.get(name, version)
            return found, [] if found else [v.version for v in store.versions(name)]

        found, others = await self._call(lookup)
        if found is None:
            raise ActivityNotFoundError(f"{name}@{version}", sorted(others, key=parse_version))
        self._versions[(name, version)] = found
        return found

    async def list(self) -> list[ActivityVersion]:
        """Every registered version, WebAssembly and native, by name then version."""
        stored = await self._call(lambda store: store.all_versions())
        return sorted(stored, key=_sort_key)

    async def remove(self, name: str, version: str) -> None:
        """Remove name@version (and its module bytes, once no other version uses them).

        Raises:
            ActivityNotFoundError: not registered.
        """

        def delete(store: ModuleStore) -> list[str] | None:
            if store.delete(name, version):
                return None
            return [v.version for v in store.versions(name)]

        others = await self._call(delete)
        self._versions.pop((name, version), None)
        self._listings.pop(name, None)
        if others is not None:
            raise ActivityNotFoundError(f"{name}@{version}", sorted(others, key=parse_version))

    # -- running -------------------------------------------------------------------------------

    async def prepare(self, activity: ActivityVersion) -> PreparedModule:
        """The compiled, export-checked module of a WebAssembly version (memoised per sha256).

        Raises:
            ValueError: the activity is native.
            CorruptModuleError: stored bytes are missing, do not match the sha256 or do not
                compile.
        """
        sha256 = activity.sha256
        if sha256 is None:
            raise ValueError(f"{activity.ref} is native: it runs in a worker, not in the sandbox")
        prepared = self._prepared.get(sha256)
        if prepared is not None:
            return prepared

        def load(store: ModuleStore) -> PreparedModule:
            content = store.module_bytes(sha256)
            if content is None:
                raise CorruptModuleError(
                    f"module sha256:{sha256} of {activity.ref} is missing from the database; "
                    "register the version again",
                    sha256=sha256,
                )
            actual = hashlib.sha256(content).hexdigest()
            if actual != sha256:
                raise CorruptModuleError(
                    f"stored module of {activity.ref} hashes to sha256:{actual}, not "
                    f"sha256:{sha256}; the database is corrupt, register the version again",
                    sha256=sha256,
                )
            return self._prepare_bytes(content, activity.abi, sha256)

        prepared = await self._call(load)
        self._prepared[sha256] = prepared
        return prepared

    def _validator(self, activity: ActivityVersion, direction: str) -> SchemaValidator:
        key = (activity.name, activity.version, activity.registered_at, direction)
        validator = self._validators.get(key)
        if validator is None:
            schema = activity.input_schema if direction == "input" else activity.output_schema
            validator = SchemaValidator(schema, direction=direction, activity=activity.ref)
            self._validators[key] = validator
        return validator

    def validate_input(self, activity: ActivityVersion, value: JSON) -> None:
        """Raise SchemaViolationError(direction="input") unless `value` fits the input schema.

        Synchronous CPU work (linear in the size of `value`); from a coroutine, await
        `validate(..., direction="input")` instead so the event loop keeps running.
        """
        self._validator(activity, "input").validate(value)

    def validate_output(self, activity: ActivityVersion, value: JSON) -> None:
        """Raise SchemaViolationError(direction="output") unless `value` fits the output schema.

        Synchronous, like `validate_input`; await `validate(..., direction="output")` in async
        code.
        """
        self._validator(activity, "output").validate(value)

    async def validate(
        self, activity: ActivityVersion, value: JSON, *, direction: Literal["input", "output"]
    ) -> None:
        """`validate_input`/`validate_output`, a large document on the registry's validation
        threads.

        A large document can take milliseconds to validate; on a thread, the event loop keeps
        serving other workflows meanwhile. A small one (see INLINE_VALIDATION_BUDGET) is
        checked here at once. `run` validates this way.

        Raises:
            SchemaViolationError: `value` does not match the `direction` schema.
        """
        validator = self._validator(activity, direction)
        if _is_small(value, INLINE_VALIDATION_BUDGET):
            validator.validate(value)
            return
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._validation_executor, validator.validate, value)

    async def run(
        self,
        activity: ActivityVersion,
        input: JSON,
        *,
        secrets: Mapping[str, str] | None = None,
    ) -> RunResult:
        """Run a WebAssembly version once: validate input, run sandboxed, validate output.

        The version's limits and grants apply; `secrets` supplies values for the granted
        secret names (read them from the worker's environment, never the guest's).

        Raises:
            SchemaViolationError: input or output does not match its schema.
            SandboxError: the sandbox failed the call (timeout, memory, trap, ...).
            CorruptModuleError: the stored module is unusable.
            ValueError: the activity is native.
        """
        await self.validate(activity, input, direction="input")
        prepared = await self.prepare(activity)
        with trace.get_tracer("loom.activity_registry").start_as_current_span(
            f"WasmCall:{activity.name}",
            attributes={
                "loom.activity.name": activity.name,
                "loom.activity.version": activity.version,
                "loom.wasm.abi": str(activity.abi),
            },
            record_exception=False,  # a sandbox error's text may quote guest data
        ) as span:
            try:
                result = await self.runtime.run(
                    prepared, input, limits=activity.limits, grants=activity.grants, secrets=secrets
                )
            except SandboxError as err:
                span.set_attribute("error.type", err.error_type)
                span.set_status(Status(StatusCode.ERROR))
                raise
            if span.is_recording() and result.usage.fuel_used is not None:
                span.set_attribute("loom.wasm.fuel_used", result.usage.fuel_used)
        await self.validate(activity, result.output, direction="output")
        return result

    async def close(self) -> None:
        """Close the database connection and stop the database thread (idempotent)."""
        if self._closed:
            return
        self._closed = True
        store, self._store = self._store, None
        if store is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, store.close)
        self._executor.shutdown(wait=False)
        self._validation_executor.shutdown(wait=False)


def _is_small(value: JSON, budget: int) -> bool:
    """Whether `value` holds at most `budget` JSON values (a KiB of text counting as one
    more): a walk that stops as soon as the budget is spent, so a large document costs
    little to tell apart."""
    stack = [value]
    while stack:
        item = stack.pop()
        budget -= 1
        if isinstance(item, str):
            budget -= len(item) >> 10
        elif isinstance(item, dict | list):
            if len(item) > budget:
                return False
            stack.extend(item.values() if isinstance(item, dict) else item)
        if budget < 0:
            return False
    return True


def _max_module_bytes(given: int | None) -> int:
    if given is None:
        text = os.environ.get(MAX_MODULE_BYTES_ENV, "").strip()
        if not text:
            return DEFAULT_MAX_MODULE_BYTES
        try:
            given = int(text)
        except ValueError:
            raise ValueError(
                f"{MAX_MODULE_BYTES_ENV}={text!r} is not a number of bytes; "
                f"set it to a positive integer (default {DEFAULT_MAX_MODULE_BYTES})"
            ) from None
    if given <= 0:
        raise ValueError(f"max_module_bytes must be a positive number of bytes, got {given}")
    return given


def _check_initial_memory(manifest: Manifest, prepared: PreparedModule) -> None:
    """A module that starts with more memory than its limit fails every call: refuse it here,
    where the fix can be named, instead of at its first call."""
    start, limit = prepared.initial_memory_bytes, manifest.limits.memory_bytes
    if start <= limit:
        return
    mib = 1024 * 1024
    needed = -(-start // mib)
    raise ManifestError(
        manifest.path,
        "limits.memory_mb",
        f"module {manifest.module_path} starts with {start / mib:.1f} MiB of linear memory, over "
        f"memory_mb = {manifest.limits.memory_mb}; raise memory_mb to at least {needed}, or "
        "build with a smaller stack (zig cc keeps 16 MiB unless linked with "
        "-Wl,-z,stack-size=65536)",
    )


def _read_module(manifest: Manifest, max_bytes: int) -> bytes:
    hint = (
        f"shrink the module (strip debug info), or raise the limit with {MAX_MODULE_BYTES_ENV} "
        "or Registry(max_module_bytes=...)"
    )
    try:
        return read_regular_file(manifest.module_path, max_bytes=max_bytes, limit_hint=hint)
    except ValueError as err:
        raise ManifestError(manifest.path, "module", f"module file {err}") from err
    except OSError as err:
        raise ManifestError(
            manifest.path, "module", f"cannot read {manifest.module_path}: {err.strerror}"
        ) from err
