"""Registry errors: one base, structured fields, messages that say what to do next.

Sandbox failures are not wrapped here; they surface as `wasm_activities.SandboxError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

__all__ = [
    "ActivityNotFoundError",
    "CorruptModuleError",
    "GrantsWidenedError",
    "ManifestError",
    "RegistryError",
    "SchemaViolationError",
    "VersionConflictError",
]


class RegistryError(Exception):
    """Base of every error the activity registry raises.

    `retryable` tells a caller (the engine's retry policy) whether running the same call again
    could succeed; registry errors describe bad definitions or bad data, so they are not.
    """

    retryable: ClassVar[bool] = False

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.details: dict[str, Any] = details

    @property
    def error_type(self) -> str:
        """The class name, as printed by the CLI (`ErrorType: message`)."""
        return type(self).__name__

    @property
    def message(self) -> str:
        """The full message (same as `str(error)`)."""
        return str(self)

    def to_json(self) -> dict[str, Any]:
        """`{type, message, details}`: the shape history rows store (like `SandboxError`)."""
        return {"type": self.error_type, "message": self.message, "details": dict(self.details)}


class ManifestError(RegistryError):
    """An `activity.toml` (or a schema it references) is invalid.

    Attributes:
        path: The manifest file.
        field: Dotted name of the offending field (`limits.memory_mb`, `input_schema`), or
            `None` when the file as a whole is unreadable.
        problem: What is wrong with it.
    """

    def __init__(self, path: str | Path, field: str | None, message: str) -> None:
        self.path = Path(path)
        self.field = field
        self.problem = message
        where = f"field '{field}'" if field else "file"
        super().__init__(
            f"{self.path}: {where}: {message}", path=str(self.path), field=field, problem=message
        )


class ActivityNotFoundError(RegistryError):
    """No registered activity version matches a spec such as `summarize@^1`.

    Attributes:
        spec: The spec that was looked up.
        registered: Versions registered under that name (empty when the name is unknown).
    """

    def __init__(self, spec: str, registered: Sequence[str] = (), *, reason: str = "") -> None:
        self.spec = spec
        self.registered = list(registered)
        if self.registered:
            hint = (
                f"registered: {', '.join(self.registered)}; "
                "register a matching version or widen the range"
            )
        else:
            hint = "no version of it is registered; run `loom activity register PATH` first"
        detail = f" ({reason})" if reason else ""
        super().__init__(
            f"activity '{spec}' not found{detail}; {hint}", spec=spec, registered=self.registered
        )


class VersionConflictError(RegistryError):
    """A name@version is already registered with different content; versions are immutable."""

    def __init__(self, ref: str, *, existing: str, attempted: str) -> None:
        self.ref = ref
        self.existing = existing
        self.attempted = attempted
        super().__init__(
            f"{ref} is already registered with {existing}, not {attempted}; "
            "versions are immutable, so bump the version in activity.toml",
            ref=ref,
            existing=existing,
            attempted=attempted,
        )


class GrantsWidenedError(RegistryError):
    """A version asks for capabilities not yet approved for its name; needs explicit approval.

    A new name starts from no grants; approvals then accumulate per name and outlive removed
    versions. Approve with `loom activity register --approve-grants` or
    `Registry.register(path, approve_grants=True)`.

    Attributes:
        ref: The version being registered.
        previous: What its grants were compared with (`the grants approved for NAME`, or the
            default for a new activity: no grants).
        widened: Human-readable additions, one per line of the diff (`net: +api.example.com`).
    """

    def __init__(self, ref: str, previous: str, widened: Sequence[str]) -> None:
        self.ref = ref
        self.previous = previous
        self.widened = list(widened)
        super().__init__(
            f"{ref} asks for grants beyond {previous}: {'; '.join(self.widened)}; review them, "
            "then re-register with --approve-grants "
            "(in Python: Registry.register(path, approve_grants=True))",
            ref=ref,
            previous=previous,
            widened=self.widened,
        )


class SchemaViolationError(RegistryError):
    """An activity's input or output does not match its JSON Schema.

    An input violation is a bug in the caller, an output violation a bug in the module; neither
    is retryable.

    Attributes:
        direction: `"input"` or `"output"`.
        errors: One line per violation, `<json path>: <problem>`.
        activity: The `name@version` whose schema was violated, when known.
    """

    def __init__(
        self, direction: str, errors: Sequence[str], *, activity: str | None = None
    ) -> None:
        self.direction = direction
        self.errors = list(errors)
        self.activity = activity
        whose = f" of {activity}" if activity else ""
        fix = (
            "fix the value passed to the activity"
            if direction == "input"
            else "the module returned data its output schema forbids; fix the module"
        )
        super().__init__(
            f"{direction} does not match the {direction} schema{whose}: "
            f"{'; '.join(self.errors)}; {fix}",
            direction=direction,
            errors=self.errors,
            activity=activity,
        )


class CorruptModuleError(RegistryError):
    """Module bytes are not a usable WebAssembly module, or no longer match their sha256."""

    def __init__(self, message: str, *, sha256: str | None = None) -> None:
        self.sha256 = sha256
        super().__init__(message, sha256=sha256)
