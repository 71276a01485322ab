"""Typed sandbox errors: every way a WebAssembly activity can fail, and whether a retry can help.

Knows nothing about wasmtime; the engine maps wasmtime failures onto these in one place.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "ActivityTimeout",
    "CapabilityDenied",
    "FuelExhausted",
    "GuestError",
    "InvalidInput",
    "InvalidModule",
    "InvalidOutput",
    "LogTooLarge",
    "MemoryLimitExceeded",
    "NonZeroExit",
    "OutputTooLarge",
    "SandboxError",
    "WasmTrap",
]

GUEST_TEXT_CHARS = 2000
"""Most characters of guest-chosen text (its error message, a URL it asked for) an error
keeps, in its message and its details: the guest decides that text's size, and errors are
stored, logged and shown."""


def shorten(text: str, limit: int = GUEST_TEXT_CHARS) -> str:
    """`text`, or its first `limit` characters and how many more there were."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit} more characters)"


class SandboxError(Exception):
    """Base of every error raised by running or preparing a WebAssembly activity.

    Attributes:
        retryable: whether running the same module with the same input again can succeed
            (class-level default; a transient failure is retryable, a deterministic limit breach
            or a policy violation is not).
        error_type: the class name, stable for storing errors as JSON (`{type, message}`).
        details: structured fields that built the message (JSON-serialisable).
    """

    retryable: ClassVar[bool] = False

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = details

    @property
    def error_type(self) -> str:
        """The class name, e.g. ``"ActivityTimeout"``."""
        return type(self).__name__

    def to_json(self) -> dict[str, Any]:
        """`{type, message, details}`, the shape history rows store."""
        return {"type": self.error_type, "message": self.message, "details": self.details}


class ActivityTimeout(SandboxError):
    """The activity ran past its wall-clock limit (`Limits.timeout_ms`). Retryable."""

    retryable = True

    def __init__(self, *, timeout_ms: int) -> None:
        super().__init__(
            f"activity exceeded its wall-clock limit of {timeout_ms} ms and was interrupted; "
            "raise limits.timeout_ms or make the activity do less work per call",
            timeout_ms=timeout_ms,
        )


class MemoryLimitExceeded(SandboxError):
    """Linear memory would have grown past `Limits.memory_mb`. Not retryable."""

    def __init__(self, *, memory_mb: int, detail: str = "") -> None:
        suffix = f" ({detail})" if detail else ""
        super().__init__(
            f"activity needed more than its memory limit of {memory_mb} MiB{suffix}; "
            "raise limits.memory_mb or reduce the input size",
            memory_mb=memory_mb,
        )


class FuelExhausted(SandboxError):
    """The activity used all of its instruction budget (`Limits.fuel`). Not retryable."""

    def __init__(self, *, fuel: int) -> None:
        super().__init__(
            f"activity ran out of fuel after {fuel} units; raise limits.fuel (0 = not metered)",
            fuel=fuel,
        )


class OutputTooLarge(SandboxError):
    """The activity produced more than `Limits.max_output_bytes` of output. Not retryable."""

    def __init__(self, *, limit: int) -> None:
        super().__init__(
            f"activity output exceeded max_output_bytes={limit}; "
            "return less data or raise limits.max_output_bytes",
            limit=limit,
        )


class LogTooLarge(SandboxError):
    """The activity logged more than `Limits.max_log_bytes`. Not retryable."""

    def __init__(self, *, limit: int) -> None:
        super().__init__(
            f"activity logs exceeded max_log_bytes={limit}; log less or raise limits.max_log_bytes",
            limit=limit,
        )


class WasmTrap(SandboxError):
    """The module trapped (unreachable, out-of-bounds access, stack overflow…). Retryable.

    `details["trap_code"]` names the trap, `details["backtrace"]` lists wasm frames.
    """

    retryable = True

    def __init__(self, *, trap: str, trap_code: str | None, backtrace: list[str]) -> None:
        frames = "; ".join(backtrace[:8])
        where = f" at {frames}" if frames else ""
        super().__init__(
            f"activity trapped: {trap}{where}; this is a bug in the module (or an input it "
            "cannot handle) — check the activity's logs",
            trap_code=trap_code,
            backtrace=backtrace,
        )


class GuestError(SandboxError):
    """The module itself reported a failure (reactor negative result, component `err`).

    Retryable, like any failure the activity's own code decides on.
    """

    retryable = True

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message, **details)

    @classmethod
    def reported(cls, guest_message: str, *, size: int | None = None) -> GuestError:
        """The error an activity returned; its message is kept verbatim up to
        `GUEST_TEXT_CHARS`, the rest counted. `size` is the message's full size in bytes
        when only its start was read from guest memory."""
        if size is not None and size > len(guest_message.encode()):
            shown = f"{guest_message[:GUEST_TEXT_CHARS]}… (message of {size} bytes cut)"
        else:
            shown = shorten(guest_message)
        return cls(f"activity reported an error: {shown}", guest_message=shown)


class NonZeroExit(GuestError):
    """A `command` module exited with a non-zero status. Retryable.

    The message ends with the tail of its stderr.
    """

    def __init__(self, *, code: int, stderr_tail: str) -> None:
        tail = stderr_tail.strip()
        super().__init__(
            f"activity exited with status {code}"
            + (f"; stderr tail: {tail}" if tail else "; it wrote nothing to stderr"),
            code=code,
            stderr_tail=tail,
        )


class InvalidOutput(SandboxError):
    """The activity's output is not one UTF-8 JSON document. Not retryable."""

    def __init__(self, *, reason: str, preview: str) -> None:
        super().__init__(
            f"activity output is not a JSON document ({reason}); output starts with {preview!r}; "
            "the module must write exactly one JSON value",
            reason=reason,
            preview=preview,
        )


class InvalidInput(SandboxError):
    """The input given to `run` cannot be serialised as JSON. Not retryable."""

    def __init__(self, *, reason: str) -> None:
        super().__init__(
            f"activity input is not JSON-serialisable ({reason}); pass dicts, lists, str, "
            "int, float, bool or None",
            reason=reason,
        )


class CapabilityDenied(SandboxError):
    """The activity used a capability its grants do not include. Not retryable.

    Raised before any connection is opened or file touched.
    """

    def __init__(self, *, capability: str, requested: str, granted: list[str]) -> None:
        shown = ", ".join(granted) if granted else "nothing"
        requested = shorten(requested)  # a guest-chosen URL can be any size
        super().__init__(
            f"activity tried {capability} {requested!r}, which its grants do not allow "
            f"(granted: {shown}); add it to the activity version's [grants] if it is intended",
            capability=capability,
            requested=requested,
            granted=granted,
        )


class InvalidModule(SandboxError):
    """The bytes are not a usable module for the declared ABI. Not retryable."""

    def __init__(self, *, abi: str, problem: str) -> None:
        super().__init__(
            f"not a valid {abi} module: {problem}; rebuild it for the {abi} ABI "
            "(see wasm_activities/ABI.md)",
            abi=abi,
            problem=problem,
        )
