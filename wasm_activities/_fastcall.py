"""Raw wasmtime C-API calls for the per-call hot path (export lookup, i32/i64 calls, memory copy).

wasmtime-py's `Func.__call__` re-reads the function type and boxes every value on each call
(~15 µs); these helpers call the C API directly with the signatures `abi.py` already checked.
"""

from __future__ import annotations

import ctypes
from ctypes import byref
from typing import Any

import wasmtime
from wasmtime import _ffi as ffi
from wasmtime._func import maybe_raise_last_exn

__all__ = [
    "Export",
    "call_i32",
    "call_i64",
    "call_void",
    "export",
    "instantiate",
    "mem_read",
    "mem_size",
    "mem_view",
    "mem_write",
]

Export = ffi.wasmtime_extern_t


def export(store: wasmtime.Store, instance: wasmtime.Instance, name: bytes) -> Export | None:
    """The export `name` of `instance`, or None."""
    item = ffi.wasmtime_extern_t()
    found = ffi.wasmtime_instance_export_get(
        store._context(), byref(instance._instance), name, len(name), byref(item)
    )
    return item if found else None


def _call(
    store: wasmtime.Store, func: Export, args: tuple[int, ...], results: ctypes.Array[Any]
) -> None:
    params = (ffi.wasmtime_val_t * len(args))()
    for i, value in enumerate(args):
        params[i].kind = ffi.WASMTIME_I32.value  # type: ignore[assignment]  # stubs say c_ubyte
        params[i].of.i32 = value
    trap = ctypes.POINTER(ffi.wasm_trap_t)()
    error = ffi.wasmtime_func_call(
        store._context(), byref(func.of.func), params, len(args), results, len(results), byref(trap)
    )
    _raise_failure(error, trap)


def _raise_failure(error: Any, trap: Any) -> None:
    """Raise what wasmtime-py's `enter_wasm` would, without its generator overhead."""
    if trap:
        trap_obj = wasmtime.Trap._from_ptr(trap)
        maybe_raise_last_exn()
        raise trap_obj
    if error:
        maybe_raise_last_exn()
        raise wasmtime.WasmtimeError._from_ptr(error)


def instantiate(store: wasmtime.Store, pre: wasmtime.InstancePre) -> wasmtime.Instance:
    """`InstancePre.instantiate` without the generator-based trap plumbing."""
    instance = ffi.wasmtime_instance_t()
    trap = ctypes.POINTER(ffi.wasm_trap_t)()
    error = ffi.wasmtime_instance_pre_instantiate(
        pre.ptr(), store._context(), byref(instance), byref(trap)
    )
    _raise_failure(error, trap)
    return wasmtime.Instance._from_raw(instance)


def call_void(store: wasmtime.Store, func: Export) -> None:
    """Call a `() -> ()` export."""
    _call(store, func, (), (ffi.wasmtime_val_t * 0)())


def call_i32(store: wasmtime.Store, func: Export, *args: int) -> int:
    """Call an `(i32...) -> i32` export."""
    results = (ffi.wasmtime_val_t * 1)()
    _call(store, func, args, results)
    return int(results[0].of.i32)


def call_i64(store: wasmtime.Store, func: Export, *args: int) -> int:
    """Call an `(i32...) -> i64` export."""
    results = (ffi.wasmtime_val_t * 1)()
    _call(store, func, args, results)
    return int(results[0].of.i64)


def mem_size(store: wasmtime.Store, memory: Export) -> int:
    """Current byte length of a memory export."""
    return int(ffi.wasmtime_memory_data_size(store._context(), byref(memory.of.memory)))


def mem_view(store: wasmtime.Store, memory: Export) -> tuple[int, int]:
    """(base address, byte length) of a memory; valid until the guest runs again (it may grow)."""
    context = store._context()
    size = int(ffi.wasmtime_memory_data_size(context, byref(memory.of.memory)))
    pointer = ffi.wasmtime_memory_data(context, byref(memory.of.memory))
    return ctypes.addressof(pointer.contents), size


def mem_write(store: wasmtime.Store, memory: Export, offset: int, data: bytes) -> bool:
    """Copy `data` into memory at `offset`; False when it would not fit."""
    base, size = mem_view(store, memory)
    if offset < 0 or offset + len(data) > size:
        return False
    ctypes.memmove(base + offset, data, len(data))
    return True


def mem_read(store: wasmtime.Store, memory: Export, offset: int, length: int) -> bytes | None:
    """Copy `length` bytes out of memory at `offset`; None when out of bounds."""
    base, size = mem_view(store, memory)
    if offset < 0 or length < 0 or offset + length > size:
        return None
    return ctypes.string_at(base + offset, length)
