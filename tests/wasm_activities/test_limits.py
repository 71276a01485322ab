"""Limits: each breach raises its own typed error and the runtime keeps working afterwards."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import wasmtime
from pydantic import ValidationError

from wasm_activities import (
    CapabilityDenied,
    GuestError,
    Limits,
    LogTooLarge,
    MemoryLimitExceeded,
    OutputTooLarge,
    PreparedModule,
    SandboxRuntime,
)
from wasm_activities.exceptions import GUEST_TEXT_CHARS

Prepared = Callable[[str], PreparedModule]


def test_limit_defaults_match_the_manifest_defaults() -> None:
    limits = Limits()
    assert (limits.memory_mb, limits.timeout_ms, limits.fuel) == (32, 2000, 0)
    assert (limits.max_output_bytes, limits.max_log_bytes) == (1_048_576, 65_536)
    with pytest.raises(ValidationError):
        Limits(memory_mb=0)
    with pytest.raises(ValidationError):
        Limits(timeout=5)  # type: ignore[call-arg]  # unknown keys are errors, not ignored
    with pytest.raises(ValidationError):
        limits.memory_mb = 64  # type: ignore[misc]  # frozen


@pytest.mark.parametrize("memory_mb", [4, 16])
def test_memory_bomb_is_held_to_its_limit(
    runtime: SandboxRuntime, prepared: Prepared, memory_mb: int
) -> None:
    with pytest.raises(MemoryLimitExceeded, match=f"{memory_mb} MiB") as info:
        runtime.run_sync(prepared("memory_bomb.c"), {}, limits=Limits(memory_mb=memory_mb))
    assert not info.value.retryable
    # the worker survives: the next call in the same runtime works
    assert runtime.run_sync(prepared("word-count"), {"text": "still alive"}).output["words"] == 2


def test_module_whose_initial_memory_exceeds_the_limit(runtime: SandboxRuntime) -> None:
    wat = """(module (memory (export "memory") 200)
      (func (export "alloc") (param i32) (result i32) i32.const 0)
      (func (export "run") (param i32 i32) (result i64) i64.const 0))"""
    module = runtime.prepare(wasmtime.wat2wasm(wat), "reactor")
    with pytest.raises(MemoryLimitExceeded):
        runtime.run_sync(module, {}, limits=Limits(memory_mb=4))


def test_ten_megabytes_of_output_is_output_too_large(
    runtime: SandboxRuntime, prepared: Prepared
) -> None:
    with pytest.raises(OutputTooLarge, match="1048576") as info:
        runtime.run_sync(prepared("big_output.c"), {})
    assert not info.value.retryable
    big = runtime.run_sync(prepared("big_output.c"), {}, limits=Limits(max_output_bytes=11 << 20))
    assert len(big.output) == 10 << 20


def test_too_much_logging_is_log_too_large(runtime: SandboxRuntime, prepared: Prepared) -> None:
    with pytest.raises(LogTooLarge):
        runtime.run_sync(prepared("echo"), {}, limits=Limits(max_log_bytes=4))


def test_usage_reports_memory_and_output(runtime: SandboxRuntime, prepared: Prepared) -> None:
    usage = runtime.run_sync(prepared("word-count"), {"text": "a b c"}).usage
    assert usage.peak_memory_bytes >= 65536
    assert usage.output_bytes == len(b'{"words":3,"chars":5}')
    assert usage.wall_ms > 0 and usage.http_calls == 0


def test_a_reactor_error_message_is_read_only_as_far_as_it_is_kept(
    runtime: SandboxRuntime,
) -> None:
    """A guest reporting a 1 MiB error message: the error keeps its start and its size."""
    size = 1024 * 1024
    wat = f"""(module (memory (export "memory") 17)
      (func (export "alloc") (param i32) (result i32) i32.const 1100000)
      (func (export "run") (param i32 i32) (result i64)
        (memory.fill (i32.const 0) (i32.const 69) (i32.const {size}))
        i64.const -{size}))"""
    module = runtime.prepare(wasmtime.wat2wasm(wat), "reactor")
    with pytest.raises(GuestError) as info:
        runtime.run_sync(module, {})
    message = str(info.value)
    assert message.endswith(f"E… (message of {size} bytes cut)")
    assert len(message) < GUEST_TEXT_CHARS + 100
    assert len(info.value.details["guest_message"]) < GUEST_TEXT_CHARS + 100


def test_guest_chosen_text_is_shortened_in_errors() -> None:
    url = "http://evil.example/" + "a" * 1_000_000
    denied = CapabilityDenied(capability="http", requested=url, granted=[])
    assert len(str(denied)) < GUEST_TEXT_CHARS + 300
    assert f"({len(url) - GUEST_TEXT_CHARS} more characters)" in str(denied)
    assert len(denied.details["requested"]) < GUEST_TEXT_CHARS + 100
    reported = GuestError.reported("e" * 10_000)
    assert str(reported).endswith(f"({10_000 - GUEST_TEXT_CHARS} more characters)")
