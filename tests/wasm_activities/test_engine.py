"""SandboxRuntime: every ABI round-trips JSON, failures map to typed errors, caching works."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import wasmtime

from wasm_activities import (
    Abi,
    ActivityTimeout,
    FuelExhausted,
    GuestError,
    InvalidInput,
    InvalidModule,
    InvalidOutput,
    Limits,
    NonZeroExit,
    OutputTooLarge,
    PreparedModule,
    SandboxRuntime,
    WasmTrap,
    get_runtime,
)

# The first test to need a module builds and compiles it (the 18 MB Python component takes
# a minute or more on a loaded 2-core machine); later tests hit the cache.
pytestmark = pytest.mark.timeout(600)

Prepared = Callable[[str], PreparedModule]
BIG_TEXT = "wörd ünïcode 🎉 " * 60_000  # 1.26 MB of multi-byte text
COMPONENT_LIMITS = Limits(memory_mb=128, timeout_ms=10_000, max_output_bytes=4_000_000)

# A reactor in WAT with a bump allocator; `run` returns whatever the test patches in.
REACTOR_WAT = """(module
 (memory (export "memory") 1)
 (global $heap (mut i32) (i32.const 1024))
 (data (i32.const 16) "not json at all")
 (func (export "alloc") (param i32) (result i32) (local i32)
   global.get $heap local.set 1
   global.get $heap local.get 0 i32.add global.set $heap
   local.get 1)
 (func (export "run") (param i32 i32) (result i64) RUN_BODY))"""


def wat_reactor(runtime: SandboxRuntime, body: str) -> PreparedModule:
    return runtime.prepare(wasmtime.wat2wasm(REACTOR_WAT.replace("RUN_BODY", body)), Abi.REACTOR)


ECHO_BODY = "local.get 0 i64.extend_i32_u i64.const 32 i64.shl local.get 1 i64.extend_i32_u i64.or"


@pytest.mark.parametrize("value", [{"a": [1, 2.5, None, True]}, "ünïcødé ✓ 🎉", 42, None, []])
def test_wat_reactor_round_trips_any_json_value(runtime: SandboxRuntime, value: object) -> None:
    module = wat_reactor(runtime, ECHO_BODY)
    assert runtime.run_sync(module, value).output == value


def test_command_echo_round_trips_unicode_and_1mb(
    runtime: SandboxRuntime, prepared: Prepared
) -> None:
    limits = Limits(max_output_bytes=4_000_000)
    result = runtime.run_sync(prepared("echo"), {"text": BIG_TEXT}, limits=limits)
    assert result.output == {"text": BIG_TEXT}
    assert result.logs == "echo: done\n"
    assert result.usage.output_bytes > 1_000_000
    assert result.usage.fuel_used is None


def test_c_reactor_counts_words_of_unicode_and_1mb(
    runtime: SandboxRuntime, prepared: Prepared
) -> None:
    module = prepared("word-count")
    assert runtime.run_sync(module, {"text": "héllo wörld\n🎉"}).output == {"words": 3, "chars": 13}
    result = runtime.run_sync(module, {"text": BIG_TEXT})
    assert result.output == {"words": BIG_TEXT.count(" ") // 1, "chars": len(BIG_TEXT)}


def test_zig_reactor_counts_codepoints(runtime: SandboxRuntime, prepared: Prepared) -> None:
    result = runtime.run_sync(prepared("char-count"), "añ🎉\n")
    encoded = '"añ🎉\\n"'
    assert result.output == {"codepoints": len(encoded), "bytes": len(encoded.encode()), "lines": 1}
    assert result.logs == "char-count: counted\n"
    big = runtime.run_sync(prepared("char-count"), BIG_TEXT).output
    assert big["codepoints"] == len(BIG_TEXT) + 2


def test_python_component_round_trips(runtime: SandboxRuntime, prepared: Prepared) -> None:
    module = prepared("py-greet")
    result = runtime.run_sync(module, {"name": "Zoë 🎉", "excited": True}, limits=COMPONENT_LIMITS)
    assert result.output == {"greeting": "Hello, Zoë 🎉!", "length": 5}
    assert result.logs == "greeting 5 characters\n"
    big = runtime.run_sync(module, {"name": BIG_TEXT}, limits=COMPONENT_LIMITS)
    assert big.output["length"] == len(BIG_TEXT)


def test_component_err_is_a_guest_error(runtime: SandboxRuntime, prepared: Prepared) -> None:
    with pytest.raises(GuestError, match="string field 'name'") as info:
        runtime.run_sync(prepared("py-greet"), {"nom": 1}, limits=COMPONENT_LIMITS)
    assert info.value.retryable


def test_component_is_metered_too(runtime: SandboxRuntime, prepared: Prepared) -> None:
    limits = Limits(memory_mb=128, timeout_ms=10_000, fuel=1000)
    with pytest.raises(FuelExhausted):
        runtime.run_sync(prepared("py-greet"), {"name": "x"}, limits=limits)


def test_reactor_negative_result_is_a_guest_error(
    runtime: SandboxRuntime, prepared: Prepared
) -> None:
    with pytest.raises(GuestError, match='string field "text"'):
        runtime.run_sync(prepared("word-count"), {"words": 1})


def test_non_zero_exit_carries_code_and_stderr_tail(
    runtime: SandboxRuntime, prepared: Prepared
) -> None:
    with pytest.raises(NonZeroExit) as info:
        runtime.run_sync(prepared("fail_exit.c"), {})
    assert info.value.details["code"] == 3
    assert "something went wrong" in str(info.value)
    assert info.value.retryable and info.value.error_type == "NonZeroExit"


def test_trap_reports_code_and_backtrace(runtime: SandboxRuntime) -> None:
    module = wat_reactor(runtime, "unreachable")
    with pytest.raises(WasmTrap) as info:
        runtime.run_sync(module, {})
    assert info.value.details["trap_code"] == "UNREACHABLE"
    assert info.value.details["backtrace"], "expected at least one wasm frame"
    assert info.value.retryable


def test_output_that_is_not_json_is_invalid_output(runtime: SandboxRuntime) -> None:
    module = wat_reactor(runtime, "i64.const 68719476751")  # ptr 16, len 15 -> "not json at all"
    with pytest.raises(InvalidOutput, match="not json at all") as info:
        runtime.run_sync(module, {})
    assert not info.value.retryable


def test_reactor_output_over_limit_is_output_too_large(runtime: SandboxRuntime) -> None:
    module = wat_reactor(runtime, "i64.const 20971520")  # ptr 0, len 20 MiB
    with pytest.raises(OutputTooLarge):
        runtime.run_sync(module, {})


def test_infinite_loop_stops_within_twice_its_timeout(runtime: SandboxRuntime) -> None:
    module = wat_reactor(runtime, "(loop br 0) i64.const 0")
    begin = time.monotonic()
    with pytest.raises(ActivityTimeout) as info:
        runtime.run_sync(module, {}, limits=Limits(timeout_ms=200))
    elapsed = time.monotonic() - begin
    assert elapsed < 0.4, f"took {elapsed:.3f}s for a 200 ms timeout"
    assert info.value.retryable


def test_fuel_exhaustion_is_typed_and_fuel_is_reported(
    runtime: SandboxRuntime, prepared: Prepared
) -> None:
    module = wat_reactor(runtime, "(loop br 0) i64.const 0")
    with pytest.raises(FuelExhausted):
        runtime.run_sync(module, {}, limits=Limits(fuel=50_000))
    result = runtime.run_sync(prepared("word-count"), {"text": "a b"}, limits=Limits(fuel=10**7))
    assert result.usage.fuel_used is not None and 0 < result.usage.fuel_used < 10**7


def test_non_json_input_is_invalid_input(runtime: SandboxRuntime, prepared: Prepared) -> None:
    with pytest.raises(InvalidInput, match="not JSON-serialisable"):
        runtime.run_sync(prepared("word-count"), {"text": {1, 2}})
    with pytest.raises(InvalidInput):
        runtime.run_sync(prepared("word-count"), float("nan"))


def test_fresh_store_per_call_leaks_no_state(runtime: SandboxRuntime) -> None:
    counter = """(module
     (memory (export "memory") 1)
     (global $n (mut i32) (i32.const 0))
     (func (export "alloc") (param i32) (result i32) i32.const 1024)
     (func (export "run") (param i32 i32) (result i64)
       global.get $n i32.const 1 i32.add global.set $n
       i32.const 16 global.get $n i32.const 48 i32.add i32.store8
       i64.const 68719476737))"""  # ptr 16, len 1: the digit '0' + n
    module = runtime.prepare(wasmtime.wat2wasm(counter), "reactor")
    assert [runtime.run_sync(module, None).output for _ in range(3)] == [1, 1, 1]


@pytest.mark.parametrize(
    ("data", "abi", "problem"),
    [
        (b"MZ\x90\x00 not wasm", "reactor", "wasm magic"),
        (b"\0asm\x01\x00\x00\x00\xff\xff", "command", "not a valid command module"),
        (b'(module (memory (export "memory") 1))', "reactor", "missing function export 'alloc'"),
        (b'(module (memory (export "memory") 1))', "command", "missing function export '_start'"),
        (b'(module (func (export "_start")))', "command", "missing memory export 'memory'"),
        (
            b'(module (import "env" "evil" (func)) (memory (export "memory") 1)'
            b' (func (export "_start")))',
            "command",
            "unsupported import env.evil",
        ),
        (
            b'(module (memory (export "memory") 1) (func (export "alloc") (param i32) (result i32)'
            b' i32.const 0) (func (export "run") (param i32 i32) (result i32) i32.const 0))',
            "reactor",
            "export 'run' has type (i32, i32) -> (i32), expected (i32, i32) -> (i64)",
        ),
        (b'(module (memory (export "memory") 1) (func (export "_start")))', "component", "core"),
    ],
)
def test_invalid_modules_name_the_problem(
    runtime: SandboxRuntime, data: bytes, abi: str, problem: str
) -> None:
    module = wasmtime.wat2wasm(data.decode()) if data.startswith(b"(") else data
    with pytest.raises(InvalidModule) as info:
        runtime.prepare(module, abi)
    assert problem in str(info.value)
    assert not info.value.retryable


def test_unknown_abi_is_a_value_error(runtime: SandboxRuntime) -> None:
    with pytest.raises(ValueError, match="abi must be one of"):
        runtime.prepare(b"\0asm", "wasi")


def test_prepare_is_cached_in_memory_and_on_disk(
    tmp_path: Path, wasm_module: Callable[[str], bytes]
) -> None:
    data = wasm_module("word-count")
    with SandboxRuntime(cache_dir=tmp_path) as first:
        module = first.prepare(data, "reactor")
        assert first.prepare(data, "reactor") is module
    artifacts = list(tmp_path.glob(f"{module.sha256}-*.cwasm"))
    assert len(artifacts) == 1
    with SandboxRuntime(cache_dir=tmp_path) as second:
        again = second.prepare(data, Abi.REACTOR)
        assert second.run_sync(again, {"text": "x y"}).output == {"words": 2, "chars": 3}
    artifacts[0].write_bytes(b"corrupt")  # a damaged artifact is recompiled, not trusted
    with SandboxRuntime(cache_dir=tmp_path) as third:
        assert third.run_sync(third.prepare(data, "reactor"), {"text": "z"}).output["words"] == 1


async def test_async_runs_in_parallel_without_blocking_the_loop(
    runtime: SandboxRuntime, prepared: Prepared
) -> None:
    module = prepared("word-count")
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    tick_task = asyncio.create_task(ticker())
    results = await asyncio.gather(*(runtime.run(module, {"text": "a " * i}) for i in range(50)))
    tick_task.cancel()
    assert [r.output["words"] for r in results] == list(range(50))
    assert ticks > 0


def test_get_runtime_is_a_process_wide_singleton() -> None:
    assert get_runtime() is get_runtime()


def test_closed_runtime_refuses_calls_and_stops_its_threads(tmp_path: Path) -> None:
    runtime = SandboxRuntime(cache_dir=tmp_path, max_workers=2)
    module = wat_reactor(runtime, ECHO_BODY)
    runtime.run_sync(module, 1)
    runtime.close()
    runtime.close()
    assert not runtime._ticker.is_alive()
    with pytest.raises(RuntimeError, match="closed"):
        runtime.run_sync(module, 1)
