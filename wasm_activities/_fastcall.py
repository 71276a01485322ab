"""Raw wasmtime C-API calls for the per-call hot path of core modules: a store by pointer, export
lookup, i32/i64 calls, memory copies.

wasmtime-py boxes every value and re-reads function types on each call, and each of its ctypes
calls releases the GIL: on a busy worker every release is a chance for another thread to take
the GIL for a whole switch interval. Here the cheap bookkeeping calls (store, fuel, exports,
memory) keep the GIL; only calls that enter the guest can release it (`Store.set_hold_gil`),
because a guest blocked in a host HTTP request or a long loop must not stall every other thread,
and a guest writing to WASI stdout/stderr needs the GIL on wasmtime's I/O thread.
"""

from __future__ import annotations

import ctypes
import threading
from ctypes import c_bool, c_char_p, c_int64, c_size_t, c_uint64, c_void_p
from typing import Any

import wasmtime
from wasmtime import _ffi as ffi
from wasmtime._func import maybe_raise_last_exn

__all__ = ["Store", "pointer"]

_holding = ctypes.PyDLL(ffi.dll._name)
_releasing = ctypes.CDLL(ffi.dll._name)  # own handle: wasmtime-py's set other argtypes


def _bind(library: Any, name: str, restype: Any, *argtypes: Any) -> Any:
    function = getattr(library, name)
    function.restype = restype
    function.argtypes = list(argtypes)
    return function


_store_new = _bind(_holding, "wasmtime_store_new", c_void_p, c_void_p, c_void_p, c_void_p)
_store_context = _bind(_holding, "wasmtime_store_context", c_void_p, c_void_p)
_store_limiter = _bind(
    _holding, "wasmtime_store_limiter", None, c_void_p, c_int64, c_int64, c_int64, c_int64, c_int64
)
_set_fuel = _bind(_holding, "wasmtime_context_set_fuel", c_void_p, c_void_p, c_uint64)
_get_fuel = _bind(_holding, "wasmtime_context_get_fuel", c_void_p, c_void_p, c_void_p)
_set_deadline = _bind(_holding, "wasmtime_context_set_epoch_deadline", None, c_void_p, c_uint64)
_set_wasi = _bind(_holding, "wasmtime_context_set_wasi", c_void_p, c_void_p, c_void_p)
_export_get = _bind(
    _holding,
    "wasmtime_instance_export_get",
    c_bool,
    c_void_p,
    c_void_p,
    c_char_p,
    c_size_t,
    c_void_p,
)
_memory_data = _bind(_holding, "wasmtime_memory_data", c_void_p, c_void_p, c_void_p)
_memory_size = _bind(_holding, "wasmtime_memory_data_size", c_size_t, c_void_p, c_void_p)
# Calls that may run guest code or drop WASI streams, in both flavours (keyed by library).
_instantiate: dict[Any, Any] = {}
_func_call: dict[Any, Any] = {}
_store_delete: dict[Any, Any] = {}
for _library in (_holding, _releasing):
    _instantiate[_library] = _bind(
        _library, "wasmtime_instance_pre_instantiate", c_void_p, *(c_void_p,) * 4
    )
    _func_call[_library] = _bind(
        _library,
        "wasmtime_func_call",
        c_void_p,
        *(c_void_p, c_void_p, c_void_p, c_size_t, c_void_p, c_size_t, c_void_p),
    )
    _store_delete[_library] = _bind(_library, "wasmtime_store_delete", None, c_void_p)

# ctypes.memmove releases the GIL around a copy of a few bytes; this one keeps it
_memmove = ctypes.PYFUNCTYPE(c_void_p, c_void_p, c_void_p, c_size_t)(ctypes._memmove_addr)  # type: ignore[attr-defined]
_EXTERN_OFFSET = ffi.wasmtime_extern_t.of.offset
_I32 = ffi.WASMTIME_I32.value


def pointer(handle: Any) -> int:
    """The address behind a wasmtime-py ctypes pointer (engine, InstancePre, WASI config)."""
    return int(ctypes.cast(handle, c_void_p).value or 0)


class _Scratch:
    """Per-thread out-parameters, allocated once instead of on every call."""

    def __init__(self) -> None:
        self.instance = ffi.wasmtime_instance_t()
        self.trap = c_void_p()
        self.exports = [ffi.wasmtime_extern_t() for _ in range(3)]
        self.args = (ffi.wasmtime_val_t * 2)()
        self.results = (ffi.wasmtime_val_t * 1)()
        self.fuel = c_uint64()
        self.args[0].kind = self.args[1].kind = _I32  # type: ignore[assignment]  # c_ubyte stub
        self.instance_at = ctypes.addressof(self.instance)
        self.trap_at = ctypes.addressof(self.trap)
        self.export_at = [ctypes.addressof(e) for e in self.exports]
        self.args_at = ctypes.addressof(self.args)
        self.results_at = ctypes.addressof(self.results)
        self.fuel_at = ctypes.addressof(self.fuel)


_scratch = threading.local()


def _get_scratch() -> _Scratch:
    scratch: _Scratch | None = getattr(_scratch, "value", None)
    if scratch is None:
        scratch = _scratch.value = _Scratch()
    return scratch


def _raise_failure(error: int | None, trap: c_void_p) -> None:
    """Raise what wasmtime-py's `enter_wasm` would."""
    if trap.value:
        trap_obj = wasmtime.Trap._from_ptr(ctypes.cast(trap.value, ctypes.POINTER(ffi.wasm_trap_t)))
        trap.value = None
        maybe_raise_last_exn()
        raise trap_obj
    if error:
        maybe_raise_last_exn()
        raise wasmtime.WasmtimeError._from_ptr(
            ctypes.cast(error, ctypes.POINTER(ffi.wasmtime_error_t))
        )


class Store:
    """One call's store, owned by pointer. Exports are addressed by slot (0-2) on this thread.

    Calls that enter the guest release the GIL unless `set_hold_gil(True)` (see the module
    docstring for when that is safe). Not thread-safe: a store lives on the thread that created
    it until `delete`.
    """

    __slots__ = ("_enter", "_scratch", "_store", "context", "has_memory")

    def __init__(self, engine: int, *, memory_bytes: int, fuel: int, deadline: int) -> None:
        self._enter: Any = _releasing
        self._scratch = _get_scratch()
        self._store = _store_new(engine, None, None)
        self.context: int = _store_context(self._store)
        self.has_memory = False
        _store_limiter(self._store, memory_bytes, 100_000, -1, -1, -1)
        _raise_failure(_set_fuel(self.context, fuel), self._scratch.trap)
        _set_deadline(self.context, deadline)

    def set_hold_gil(self, hold: bool) -> None:
        self._enter = _holding if hold else _releasing

    def set_wasi(self, config: wasmtime.WasiConfig) -> None:
        """Give the store its WASI context (consumes `config`)."""
        _raise_failure(_set_wasi(self.context, pointer(config._consume())), self._scratch.trap)

    def interrupt(self) -> None:
        """Make the guest trap as soon as it runs again (call from the calling thread only).

        Compiled code keeps the epoch deadline it loaded and re-reads it only once the epoch
        passes it, so lowering the deadline alone let an aborted guest run on to its timeout.
        Fuel is re-read after every host call: none left traps at the next check."""
        if self.context:
            _set_deadline(self.context, 0)
            _set_fuel(self.context, 0)  # an error here only means it traps at its deadline

    def fuel_left(self) -> int:
        scratch = self._scratch
        _raise_failure(_get_fuel(self.context, scratch.fuel_at), scratch.trap)
        return int(scratch.fuel.value)

    def instantiate(self, pre: int) -> None:
        scratch = self._scratch
        error = _instantiate[self._enter](pre, self.context, scratch.instance_at, scratch.trap_at)
        _raise_failure(error, scratch.trap)
        self.has_memory = self.export(0, b"memory")

    def export(self, slot: int, name: bytes) -> bool:
        """Look up export `name` into `slot`; False when the instance has no such export."""
        scratch = self._scratch
        return bool(
            _export_get(self.context, scratch.instance_at, name, len(name), scratch.export_at[slot])
        )

    def call(self, slot: int, *args: int, results: int = 1) -> ctypes.Array[Any]:
        """Call the function in `slot` with i32 arguments and 0 or 1 results."""
        scratch = self._scratch
        for i, value in enumerate(args):
            scratch.args[i].of.i32 = value
        error = _func_call[self._enter](
            self.context,
            scratch.export_at[slot] + _EXTERN_OFFSET,
            scratch.args_at,
            len(args),
            scratch.results_at,
            results,
            scratch.trap_at,
        )
        _raise_failure(error, scratch.trap)
        return scratch.results

    def memory_size(self, slot: int) -> int:
        return int(_memory_size(self.context, self._scratch.export_at[slot] + _EXTERN_OFFSET))

    def write(self, slot: int, offset: int, data: bytes) -> bool:
        """Copy `data` into the memory in `slot` at `offset`; False when it would not fit."""
        at = self._scratch.export_at[slot] + _EXTERN_OFFSET
        size = _memory_size(self.context, at)
        if offset < 0 or offset + len(data) > size:
            return False
        _memmove(_memory_data(self.context, at) + offset, data, len(data))
        return True

    def read(self, slot: int, offset: int, length: int) -> bytes | None:
        """Copy bytes out of the memory in `slot`; None when out of bounds."""
        at = self._scratch.export_at[slot] + _EXTERN_OFFSET
        size = _memory_size(self.context, at)
        if offset < 0 or length < 0 or offset + length > size:
            return None
        return ctypes.string_at(_memory_data(self.context, at) + offset, length)

    def delete(self) -> None:
        """Free the store (idempotent). Releases the GIL unless told to hold it: WASI stream
        finalizers may need it on another thread."""
        store, self._store = self._store, None
        if store:
            self.context = 0
            _store_delete[self._enter](store)
