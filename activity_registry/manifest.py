"""The activity definition: the `activity.toml` manifest and the registered `ActivityVersion`.

Parsing and validation only; storage lives in `module_store`, running in `wasm_activities`.
"""

from __future__ import annotations

import json
import os
import re
import stat
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from activity_registry.exceptions import ManifestError
from activity_registry.schema import JSON, check_schema
from activity_registry.version_range import parse_version
from wasm_activities import Grants, Limits

__all__ = [
    "ABIS",
    "DEFINITION_FIELDS",
    "MANIFEST_FILENAME",
    "MAX_MANIFEST_BYTES",
    "MAX_SCHEMA_BYTES",
    "NAME_PATTERN",
    "ActivityVersion",
    "CircuitBreakerPolicy",
    "Manifest",
    "RetryPolicy",
    "read_regular_file",
]

MANIFEST_FILENAME = "activity.toml"
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
ABIS = ("command", "reactor", "component", "native")
WasmAbi = Literal["command", "reactor", "component"]
_SCHEMA_FIELDS = ("input_schema", "output_schema")
MAX_MANIFEST_BYTES = 1 << 20
"""An activity.toml larger than this (1 MiB) is refused unread."""
MAX_SCHEMA_BYTES = 1 << 20
"""A schema file larger than this (1 MiB) is refused: schemas are compiled per worker."""


class RetryPolicy(BaseModel):
    """How the engine retries a failed activity call (only retryable failures are retried).

    The delay before attempt n+1 is `min(initial_interval_ms * backoff**(n-1), max_interval_ms)`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_attempts: int = Field(default=3, ge=1)
    initial_interval_ms: int = Field(default=200, ge=0)
    backoff: float = Field(default=2.0, ge=1.0)
    max_interval_ms: int = Field(default=60_000, ge=0)


class CircuitBreakerPolicy(BaseModel):
    """`[circuit_breaker]`: after `failures` failed attempts within `window_ms` the engine
    stops running the activity (for every worker on the database) until `reset_after_ms`
    has passed; then one probe attempt decides whether it closes or opens again."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    failures: int = Field(default=5, ge=1)
    window_ms: int = Field(default=60_000, ge=1)
    reset_after_ms: int = Field(default=30_000, ge=1)


def _check_name(value: str) -> str:
    if not NAME_PATTERN.match(value):
        raise ValueError(
            f"{value!r} is not a valid activity name: use lowercase letters, digits, '.', '_' "
            "and '-', starting with a letter or digit"
        )
    return value


def _check_version(value: str) -> str:
    parse_version(value)
    return value


class _Definition(BaseModel):
    """What a manifest and a registered version share: identity, schemas, limits, grants."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    version: str
    description: str = ""
    input_schema: dict[str, JSON]
    output_schema: dict[str, JSON]
    limits: Limits = Field(default_factory=Limits)
    grants: Grants = Field(default_factory=Grants)
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    circuit_breaker: CircuitBreakerPolicy | None = None

    @property
    def ref(self) -> str:
        """`name@version`."""
        return f"{self.name}@{self.version}"


class Manifest(_Definition):
    """A validated `activity.toml`: one version of one WebAssembly activity.

    Schemas given as file names are loaded (relative to the manifest) and checked against the
    JSON Schema 2020-12 meta-schema; `module` and relative `grants.fs` host paths are resolved
    against the manifest's directory. Unknown fields are errors, so typos never go unnoticed.
    """

    abi: WasmAbi
    module: str
    path: Path = Field(description="The manifest file this was loaded from (absolute).")

    @field_validator("name")
    @classmethod
    def _name_is_valid(cls, value: str) -> str:
        return _check_name(value)

    @field_validator("version")
    @classmethod
    def _version_is_semver(cls, value: str) -> str:
        return _check_version(value)

    @property
    def module_path(self) -> Path:
        """The module file, resolved against the manifest's directory."""
        return (self.path.parent / self.module).resolve()

    @classmethod
    def load(cls, path: str | Path) -> Manifest:
        """Load and validate a manifest, given its path or the path of the .wasm beside it.

        A directory containing `activity.toml` is accepted too.

        Raises:
            ManifestError: naming the file and the offending field.
        """
        given = Path(path)
        manifest_path = _locate(given)
        raw = _read_toml(manifest_path)
        base = manifest_path.parent
        data: dict[str, Any] = dict(raw)
        _reject_unknown_fields(manifest_path, data)
        for key in _SCHEMA_FIELDS:
            if isinstance(data.get(key), str):
                data[key] = _read_schema(manifest_path, key, data[key])
        if isinstance(data.get("grants"), dict):
            data["grants"] = _resolve_fs_hosts(data["grants"], base)
        data["path"] = manifest_path
        try:
            manifest = cls.model_validate(data)
        except ValidationError as err:
            raise _manifest_error(manifest_path, err) from err
        for key in _SCHEMA_FIELDS:
            try:
                check_schema(getattr(manifest, key))
            except ValueError as err:
                raise ManifestError(manifest_path, key, str(err)) from err
        _check_module(manifest, given)
        return manifest


class ActivityVersion(_Definition):
    """One registered, immutable version of an activity (WebAssembly or native).

    `sha256` identifies the module bytes (None for `native`, whose code is the worker's).
    """

    abi: str = Field(description="command | reactor | component | native")
    sha256: str | None
    registered_at: int = Field(description="Unix time in milliseconds.")

    @field_validator("abi")
    @classmethod
    def _abi_is_known(cls, value: str) -> str:
        if value not in ABIS:
            raise ValueError(f"abi {value!r} is not one of {', '.join(ABIS)}")
        return value

    @property
    def is_native(self) -> bool:
        """True for Python `@loom.activity` functions, which run in the worker, not a sandbox."""
        return self.abi == "native"


def _locate(given: Path) -> Path:
    if given.is_dir():
        candidate = given / MANIFEST_FILENAME
    elif given.suffix == ".wasm":
        candidate = given.parent / MANIFEST_FILENAME
    else:
        candidate = given
    if not candidate.is_file():
        if candidate != given:
            raise ManifestError(
                candidate, None, f"no {MANIFEST_FILENAME} found beside {given}; create one"
            )
        raise ManifestError(candidate, None, "file not found")
    return candidate.resolve()


def read_regular_file(path: Path, *, max_bytes: int, limit_hint: str = "") -> bytes:
    """The bytes of `path`, refusing anything but a regular file of at most `max_bytes`.

    A device (`/dev/zero`), FIFO or growing file would otherwise be read forever: the file is
    opened without blocking, checked with fstat, and read no further than the limit.

    Raises:
        ValueError: not a regular file, or too large (the message says how to fix it).
        OSError: it cannot be opened or read.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"{path} is not a regular file; point at a file")
        content = file.read(max_bytes + 1)
    if len(content) > max_bytes:
        hint = f" {limit_hint}" if limit_hint else ""
        raise ValueError(
            f"{path} is {max(info.st_size, len(content)):,} bytes, over the "
            f"{max_bytes:,}-byte limit;{hint or ' make it smaller'}"
        )
    return content


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        content = read_regular_file(path, max_bytes=MAX_MANIFEST_BYTES)
        return tomllib.loads(content.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ManifestError(path, None, f"not valid TOML: {err}") from err
    except ValueError as err:
        raise ManifestError(path, None, str(err)) from err
    except OSError as err:
        raise ManifestError(path, None, f"cannot read: {err.strerror}") from err


_SECTIONS: dict[str, type[BaseModel]] = {
    "limits": Limits,
    "grants": Grants,
    "retry": RetryPolicy,
    "circuit_breaker": CircuitBreakerPolicy,
}


def _reject_unknown_fields(path: Path, data: dict[str, Any]) -> None:
    allowed = set(Manifest.model_fields) - {"path"}
    for key in data:
        if key not in allowed:
            raise ManifestError(path, key, f"unknown field; expected one of {sorted(allowed)}")
    for section, model in _SECTIONS.items():
        table = data.get(section)
        if not isinstance(table, dict):
            continue
        for key in table:
            if key not in model.model_fields:
                raise ManifestError(
                    path,
                    f"{section}.{key}",
                    f"unknown field; [{section}] accepts {sorted(model.model_fields)}",
                )


def _read_schema(manifest_path: Path, field: str, relative: str) -> JSON:
    schema_path = manifest_path.parent / relative
    try:
        content = read_regular_file(schema_path, max_bytes=MAX_SCHEMA_BYTES)
    except ValueError as err:
        raise ManifestError(manifest_path, field, f"schema file {err}") from err
    except OSError as err:
        raise ManifestError(
            manifest_path, field, f"cannot read schema file {schema_path}: {err.strerror}"
        ) from err
    try:
        return json.loads(content.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise ManifestError(
            manifest_path, field, f"schema file {schema_path} is not valid JSON: {err}"
        ) from err


def _resolve_fs_hosts(grants: dict[str, Any], base: Path) -> dict[str, Any]:
    """Relative `fs` host paths mean "relative to the manifest", not to the caller's cwd."""
    fs = grants.get("fs")
    if not isinstance(fs, list):
        return grants
    resolved = []
    for entry in fs:
        if isinstance(entry, dict) and isinstance(entry.get("host"), str):
            entry = {**entry, "host": str((base / entry["host"]).resolve())}
        resolved.append(entry)
    return {**grants, "fs": resolved}


def _manifest_error(path: Path, err: ValidationError) -> ManifestError:
    first = err.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or None
    message = first["msg"]
    if first["type"] == "missing":
        message = "required field is missing"
        if field in _SCHEMA_FIELDS:
            message += f'; set {field} = "schemas/x.json" or add an [{field}] table'
    elif "input" in first and first["type"] != "missing":
        message = f"{message} (got {first['input']!r})"
    more = err.error_count() - 1
    if more:
        message += f" (and {more} more error{'s' if more > 1 else ''})"
    return ManifestError(path, field, message)


def _check_module(manifest: Manifest, given: Path) -> None:
    module_path = manifest.module_path
    if given.suffix == ".wasm" and given.resolve() != module_path:
        raise ManifestError(
            manifest.path,
            "module",
            f"names {manifest.module}, but {given} was given; register the manifest instead",
        )
    if not module_path.is_file():
        raise ManifestError(
            manifest.path, "module", f"module file {module_path} does not exist; build it first"
        )


# The fields a manifest hands over verbatim to the version it registers.
DEFINITION_FIELDS = tuple(_Definition.model_fields)
