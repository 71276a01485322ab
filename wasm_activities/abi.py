"""The three activity ABIs and the static checks a module must pass to be run under one.

See ABI.md for the calling conventions; this module only validates imports and exports.
"""

from __future__ import annotations

from enum import StrEnum

import wasmtime

from .exceptions import InvalidModule
from .host import HOST_IMPORTS, HOST_MODULE

__all__ = ["Abi", "check_core_module", "check_header"]

WASI_MODULE = "wasi_snapshot_preview1"
_WASM_MAGIC = b"\0asm"
_CORE_VERSION = b"\x01\x00\x00\x00"
_COMPONENT_LAYER = b"\x0d\x00\x01\x00"


class Abi(StrEnum):
    """How the host passes JSON in and gets JSON out (the manifest's `abi` field).

    - ``command``: WASI preview 1 `_start`; JSON on stdin, JSON on stdout, logs on stderr,
      non-zero exit = failure.
    - ``reactor``: exports `memory`, `alloc(len) -> ptr`, `run(ptr, len) -> i64`.
    - ``component``: WIT world exporting `run: func(input: string) -> result<string, string>`.
    """

    COMMAND = "command"
    REACTOR = "reactor"
    COMPONENT = "component"


def check_header(module: bytes, abi: Abi) -> None:
    """Reject non-wasm bytes and core/component mismatches before compiling anything."""
    if len(module) < 8 or module[:4] != _WASM_MAGIC:
        raise InvalidModule(
            abi=abi,
            problem=f"bytes do not start with the wasm magic \\0asm (got {bytes(module[:8])!r})",
        )
    is_component = module[4:8] == _COMPONENT_LAYER
    if abi is Abi.COMPONENT and not is_component:
        raise InvalidModule(abi=abi, problem="this is a core module, not a component")
    if abi is not Abi.COMPONENT and module[4:8] != _CORE_VERSION:
        kind = "a component" if is_component else f"version {bytes(module[4:8])!r}"
        raise InvalidModule(abi=abi, problem=f"expected a core wasm module, got {kind}")


def _export_kinds(module: wasmtime.Module) -> dict[str, object]:
    return {export.name: export.type for export in module.exports}


def _require_func(
    exports: dict[str, object], abi: Abi, name: str, params: list[str], results: list[str]
) -> None:
    ty = exports.get(name)
    if not isinstance(ty, wasmtime.FuncType):
        raise InvalidModule(abi=abi, problem=f"missing function export {name!r}")
    got_params = [str(p) for p in ty.params]
    got_results = [str(r) for r in ty.results]
    if got_params != params or got_results != results:
        raise InvalidModule(
            abi=abi,
            problem=f"export {name!r} has type ({', '.join(got_params)}) -> "
            f"({', '.join(got_results)}), expected ({', '.join(params)}) -> ({', '.join(results)})",
        )


def check_core_module(module: wasmtime.Module, abi: Abi) -> None:
    """Check exports and imports of a compiled core module against `abi`; InvalidModule names
    the first export or import that is wrong."""
    exports = _export_kinds(module)
    if not isinstance(exports.get("memory"), wasmtime.MemoryType):
        raise InvalidModule(abi=abi, problem="missing memory export 'memory'")
    if abi is Abi.COMMAND:
        _require_func(exports, abi, "_start", [], [])
    else:
        _require_func(exports, abi, "alloc", ["i32"], ["i32"])
        _require_func(exports, abi, "run", ["i32", "i32"], ["i64"])
        if "_initialize" in exports:
            _require_func(exports, abi, "_initialize", [], [])
    for imp in module.imports:
        if imp.module == WASI_MODULE:
            continue
        if imp.module == HOST_MODULE and imp.name in HOST_IMPORTS:
            continue
        raise InvalidModule(
            abi=abi,
            problem=f"unsupported import {imp.module}.{imp.name} (allowed: {WASI_MODULE}.* and "
            f"{HOST_MODULE}.{{{', '.join(sorted(HOST_IMPORTS))}}})",
        )
