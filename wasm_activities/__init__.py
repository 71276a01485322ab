"""Sandboxed WebAssembly activities: run untrusted modules with JSON in/out under enforced
limits and explicit capability grants, in microseconds. Knows nothing about workflows.

Quick use::

    from wasm_activities import get_runtime, Limits, Grants

    runtime = get_runtime()
    module = runtime.prepare(wasm_bytes, "reactor")         # validate, compile/cached, pre-link
    result = await runtime.run(module, {"text": "a b c"},   # thread pool, fresh Store per call
                               limits=Limits(timeout_ms=500), grants=Grants(net=["api.x.com"]))
    result.output, result.usage, result.logs

ABIs (full calling conventions in ``wasm_activities/ABI.md``):

- ``command``: WASI preview 1 ``_start``. The input JSON is stdin, the output JSON is stdout,
  stderr is captured as logs, exit status != 0 raises `NonZeroExit` (with the stderr tail).
- ``reactor``: exports ``memory``, ``alloc(len: i32) -> i32`` and ``run(ptr: i32, len: i32) -> i64``
  (optional ``_initialize`` is called first). The host allocates and writes the UTF-8 input JSON,
  calls ``run``, and reads the output at ``(result >> 32, result & 0xffffffff)``. A negative
  result reports failure: ``-result`` packs a UTF-8 error message the same way (`GuestError`).
- ``component``: a WASI preview 2 component exporting
  ``run: func(input: string) -> result<string, string>``; ``err`` raises `GuestError`.

Host imports (core module ``loom``; all pointers/lengths are i32 into the guest's ``memory``):
``log(ptr, len)``, ``config_get(key_ptr, key_len) -> len | -1``,
``http_request(req_ptr, req_len) -> len | -code``, ``take(buf_ptr, buf_len) -> copied``.
Results larger than a scalar are fetched with ``take``. Secrets appear to the guest only as
``{{secret:NAME}}`` placeholders, substituted by the host into requests to granted hosts.

Errors: every failure is a `SandboxError` subclass with ``retryable`` and ``error_type``;
retryable: `ActivityTimeout`, `WasmTrap`, `GuestError`/`NonZeroExit`; not retryable:
`MemoryLimitExceeded`, `FuelExhausted`, `OutputTooLarge`, `LogTooLarge`, `InvalidOutput`,
`InvalidInput`, `CapabilityDenied`, `InvalidModule`.
"""

from __future__ import annotations

from .abi import Abi
from .engine import PreparedModule, SandboxRuntime, get_runtime
from .exceptions import (
    ActivityTimeout,
    CapabilityDenied,
    FuelExhausted,
    GuestError,
    InvalidInput,
    InvalidModule,
    InvalidOutput,
    LogTooLarge,
    MemoryLimitExceeded,
    NonZeroExit,
    OutputTooLarge,
    SandboxError,
    WasmTrap,
)
from .grants import FsGrant, Grants
from .limits import Limits, RunResult, Usage

__all__ = [
    "Abi",
    "ActivityTimeout",
    "CapabilityDenied",
    "FsGrant",
    "FuelExhausted",
    "Grants",
    "GuestError",
    "InvalidInput",
    "InvalidModule",
    "InvalidOutput",
    "Limits",
    "LogTooLarge",
    "MemoryLimitExceeded",
    "NonZeroExit",
    "OutputTooLarge",
    "PreparedModule",
    "RunResult",
    "SandboxError",
    "SandboxRuntime",
    "Usage",
    "WasmTrap",
    "get_runtime",
]
