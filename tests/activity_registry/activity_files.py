"""Tiny activities for tests: WAT modules and manifests written into a directory.

Shared by tests/activity_registry and tests/e2e.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import wasmtime

# Reactor that returns its input unchanged: a bump allocator, and run(ptr, len) -> ptr<<32|len.
ECHO_WAT = """
(module
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 1024))
  (func (export "alloc") (param $len i32) (result i32)
    (local $ptr i32)
    (local.set $ptr (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $len)))
    (local.get $ptr))
  (func (export "run") (param $ptr i32) (param $len i32) (result i64)
    (i64.or (i64.shl (i64.extend_i32_u (local.get $ptr)) (i64.const 32))
            (i64.extend_i32_u (local.get $len)))))
"""

# Reactor that spins forever: hits the wall-clock limit.
SPIN_WAT = """
(module
  (memory (export "memory") 1)
  (func (export "alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "run") (param i32 i32) (result i64) (loop $forever (br $forever)) (i64.const 0)))
"""

# A valid module without the reactor exports.
NO_EXPORTS_WAT = '(module (memory (export "memory") 1))'

ANY_OBJECT: dict[str, Any] = {"type": "object"}


def constant_wat(output: str) -> str:
    """A reactor whose run() ignores its input and returns `output`."""
    data = output.encode()
    escaped = "".join(f"\\{b:02x}" for b in data)
    return f"""
(module
  (memory (export "memory") 1)
  (data (i32.const 0) "{escaped}")
  (func (export "alloc") (param i32) (result i32) (i32.const 4096))
  (func (export "run") (param i32 i32) (result i64) (i64.const {len(data)})))
"""


ActivityFactory = Callable[..., Path]


def toml_value(value: Any) -> str:
    """Render a JSON value as a TOML inline value (enough for schemas and grants)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        items = ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items())
        return "{ " + items + " }" if items else "{}"
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(value)


def write_activity(
    directory: Path,
    *,
    name: str = "echo",
    version: str = "1.0.0",
    wat: str | None = ECHO_WAT,
    module_bytes: bytes | None = None,
    abi: str = "reactor",
    input_schema: dict[str, Any] | None = None,
    output_schema: dict[str, Any] | None = None,
    grants: str = "",
    extra: str = "",
) -> Path:
    """Write `<directory>/<name>-<version>/{activity.toml, module.wasm}`; return the manifest."""
    folder = directory / f"{name}-{version}"
    folder.mkdir(parents=True, exist_ok=True)
    content = module_bytes if module_bytes is not None else wasmtime.wat2wasm(wat or "")
    (folder / "module.wasm").write_bytes(content)
    # The input schema lives in a file, the output schema inline: both forms stay covered.
    (folder / "in.json").write_text(json.dumps(input_schema or ANY_OBJECT))
    manifest = folder / "activity.toml"
    manifest.write_text(
        f'name = "{name}"\n'
        f'version = "{version}"\n'
        f'abi = "{abi}"\n'
        'module = "module.wasm"\n'
        'description = "test activity"\n'
        'input_schema = "in.json"\n'
        f"output_schema = {toml_value(output_schema or ANY_OBJECT)}\n"
        f"{extra}\n" + (f"[grants]\n{grants}\n" if grants else "")
    )
    return manifest
