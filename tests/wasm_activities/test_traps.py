"""Trap classification: a module's own bug is a WasmTrap (retryable per policy) even when it
holds much of its memory; MemoryLimitExceeded is kept for a refused grow."""

from __future__ import annotations

import pytest
import wasmtime

from wasm_activities import Abi, Limits, MemoryLimitExceeded, SandboxRuntime, WasmTrap

# 40 pages (2.5 MiB) of a 4 MiB limit: over half, like a C module built with the documented
# command, whose every trap used to be reported as MemoryLimitExceeded.
REACTOR = """(module
 (memory (export "memory") 40)
 (func (export "alloc") (param i32) (result i32) i32.const 1024)
 (func $recurse (param i32) (result i32) local.get 0 call $recurse)
 (func (export "run") (param i32 i32) (result i64)
   BODY))"""
BODIES = {
    "MEMORY_OUT_OF_BOUNDS": "i32.const -8 i64.load",
    "STACK_OVERFLOW": "i32.const 1 call $recurse i64.extend_i32_u",
    "INTEGER_DIVISION_BY_ZERO": "i64.const 1 i64.const 0 i64.div_u",
}


@pytest.mark.parametrize("code", list(BODIES))
def test_a_bug_is_a_wasm_trap_not_a_memory_limit(runtime: SandboxRuntime, code: str) -> None:
    module = runtime.prepare(wasmtime.wat2wasm(REACTOR.replace("BODY", BODIES[code])), Abi.REACTOR)
    with pytest.raises(WasmTrap) as info:
        runtime.run_sync(module, {}, limits=Limits(memory_mb=4))
    assert info.value.details["trap_code"] == code
    assert info.value.retryable


def test_an_abort_after_a_refused_grow_is_the_memory_limit(runtime: SandboxRuntime) -> None:
    body = "(drop (memory.grow (i32.const 100))) unreachable"
    module = runtime.prepare(wasmtime.wat2wasm(REACTOR.replace("BODY", body)), Abi.REACTOR)
    with pytest.raises(MemoryLimitExceeded):
        runtime.run_sync(module, {}, limits=Limits(memory_mb=4))
