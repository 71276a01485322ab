"""Resource limits for one activity call, and the usage record a call returns.

Pure data: the engine enforces these; nothing here knows about wasmtime.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Limits", "RunResult", "Usage"]

MIB = 1024 * 1024


class Limits(BaseModel):
    """Per-call resource limits; each breach raises its own typed `SandboxError`.

    Attributes:
        memory_mb: cap on the module's linear memory (MiB); growth past it fails and the call
            raises `MemoryLimitExceeded`.
        timeout_ms: wall-clock budget, including time spent in host calls such as HTTP;
            breaching it raises `ActivityTimeout` within one ticker period (10 ms).
        fuel: instruction budget; 0 means not metered, otherwise exhaustion raises
            `FuelExhausted`.
        max_output_bytes: cap on the JSON output (stdout for `command`) -> `OutputTooLarge`.
        max_log_bytes: cap on logs (stderr and `loom.log`) -> `LogTooLarge`.
        max_open_files: descriptors a call with fs grants may hold open at once; opening
            more fails inside the guest with EMFILE ("too many open files"). Such calls run
            in a sandbox process, so the worker's own descriptors are never at stake.
    """

    # strict: `memory_mb = "32"` in a manifest is a mistake to report, not a string to coerce
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    memory_mb: int = Field(default=32, ge=1, le=4096)
    timeout_ms: int = Field(default=2000, ge=1, le=24 * 3600 * 1000)
    fuel: int = Field(default=0, ge=0)
    max_output_bytes: int = Field(default=1_048_576, ge=1)
    max_log_bytes: int = Field(default=65_536, ge=0)
    max_open_files: int = Field(default=256, ge=1, le=65_536)

    @property
    def memory_bytes(self) -> int:
        """`memory_mb` in bytes."""
        return self.memory_mb * MIB


class Usage(BaseModel):
    """What one call consumed.

    Attributes:
        wall_ms: time from store creation to output parsed (excludes the thread-pool queue).
        fuel_used: instructions charged, or None when the call was not metered.
        peak_memory_bytes: size of linear memory at the end of the call (memory never shrinks).
        output_bytes: size of the raw JSON output.
        http_calls: number of `loom.http_request` calls that reached the network.
        egress: the journal of those requests, one dict each (at most 256): `method`,
            `scheme`, `host`, `port`, `path` (without the query), `status` (None when no
            response), `bytes_out`, `bytes_in`, `duration_ms` and, for a failed exchange,
            `error`. Never a body, a query, a header value or a secret.
    """

    model_config = ConfigDict(frozen=True)

    wall_ms: float
    fuel_used: int | None
    peak_memory_bytes: int
    output_bytes: int
    http_calls: int
    egress: list[dict[str, Any]] = Field(default_factory=list)


class RunResult(BaseModel):
    """The parsed JSON output of a successful call, its usage and its captured logs."""

    model_config = ConfigDict(frozen=True)

    output: Any
    usage: Usage
    logs: str
