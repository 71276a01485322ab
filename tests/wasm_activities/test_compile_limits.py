"""Compiling is bounded: a module that takes long to compile cannot stall registration or a
worker past the compile-time limit, and one within it compiles (in a child process) and runs."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import wasmtime

from wasm_activities import Abi, InvalidModule, SandboxRuntime
from wasm_activities.engine import INPROCESS_COMPILE_BYTES

pytestmark = pytest.mark.timeout(300)

OUTPUT = b'{"ok":true}'
OUTPUT_WAT = OUTPUT.decode().replace('"', '\\"')  # as a WAT string literal


def slow_to_compile(steps: int) -> bytes:
    """A reactor whose one huge straight-line function takes Cranelift seconds (about 25 µs
    per byte of code on this machine), returning {"ok": true}."""
    body = "\n".join(f"local.get 0 i32.const {i} i32.add local.set 0" for i in range(steps))
    return wasmtime.wat2wasm(f"""(module
      (memory (export "memory") 1)
      (data (i32.const 16) "{OUTPUT_WAT}")
      (func $work (param i32) (result i32) {body} local.get 0)
      (func (export "alloc") (param i32) (result i32) i32.const 1024)
      (func (export "run") (param i32 i32) (result i64)
        (drop (call $work (local.get 1)))
        i64.const {(16 << 32) | len(OUTPUT)}))""")


def test_a_module_compiling_past_the_limit_is_refused_at_the_limit(tmp_path: Path) -> None:
    module = slow_to_compile(40_000)  # about 9 s of compiling on a quiet machine
    assert len(module) > INPROCESS_COMPILE_BYTES
    with SandboxRuntime(cache_dir=tmp_path, compile_timeout_s=2.0) as runtime:
        began = time.monotonic()
        with pytest.raises(InvalidModule, match="longer than 2 s"):
            runtime.prepare(module, Abi.REACTOR)
        assert time.monotonic() - began < 5.0
    assert not list(tmp_path.glob("*.cwasm"))  # nothing half-built is cached


def test_a_large_module_within_the_limit_compiles_out_of_process_and_runs(
    tmp_path: Path,
) -> None:
    module = slow_to_compile(9_000)
    assert len(module) > INPROCESS_COMPILE_BYTES
    with SandboxRuntime(cache_dir=tmp_path, compile_timeout_s=120.0) as runtime:
        prepared = runtime.prepare(module, Abi.REACTOR)
        assert runtime.run_sync(prepared, {}).output == {"ok": True}
    assert len(list(tmp_path.glob("*.cwasm"))) == 1  # cached: the next worker loads it


def test_a_broken_large_module_names_its_problem(tmp_path: Path) -> None:
    module = bytearray(slow_to_compile(9_000))
    module[-40:] = b"\xff" * 40  # corrupt its code section's end
    with SandboxRuntime(cache_dir=tmp_path) as runtime, pytest.raises(InvalidModule) as info:
        runtime.prepare(bytes(module), Abi.REACTOR)
    assert "longer than" not in str(info.value)
