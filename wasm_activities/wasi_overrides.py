"""WASI calls the sandbox implements itself: wasmtime's own would outlast the deadline
(`poll_oneoff`) or reach outside a grant (`path_symlink`).

wasmtime's `poll_oneoff` (what `nanosleep`, `sleep` and `usleep` become) blocks its thread in
native code for the whole requested time: epoch interruption only stops *wasm* code, so a guest
with no grants at all slept 5 s under a 500 ms limit, and one such sleeper held a pool thread
(and, inline, the event loop) the whole time. This one waits at most until the call's
deadline, wakes at once when the call is aborted, marks its thread as blocked so the pool
grows for the calls queued behind it, and turns a sleep past the deadline into ActivityTimeout.

Layouts follow wasi_snapshot_preview1 (`subscription` 48 bytes, `event` 32 bytes).
"""

from __future__ import annotations

import struct
import time

import wasmtime

from ._pool import blocking
from .abi import WASI_MODULE
from .exceptions import ActivityTimeout
from .host import current, guarded

__all__ = ["BLOCKING_WASI_IMPORTS", "define_wasi_overrides"]

BLOCKING_WASI_IMPORTS = frozenset({"poll_oneoff"})
"""WASI imports that can wait on time: a module importing one never runs on the event loop."""
_SYMLINK_REFUSED = 63  # EPERM

_SUBSCRIPTION = struct.Struct("<QB7xI4xQQH6x")  # userdata, tag, clock id, timeout, precision, flags
_EVENT = struct.Struct("<QHB5xQH6x")  # userdata, errno, type, nbytes, flags
_CLOCK, _FD_READ, _FD_WRITE = 0, 1, 2
_REALTIME = 0
_ABSTIME = 1
_SUCCESS, _FAULT, _INVAL, _NOTSUP = 0, 21, 28, 58
_MAX_SUBSCRIPTIONS = 4096


def _poll_oneoff(
    caller: wasmtime.Caller, in_ptr: int, out_ptr: int, count: int, nevents_ptr: int
) -> int:
    context = current()
    memory = caller.get("memory")
    if not isinstance(memory, wasmtime.Memory):
        return _FAULT
    if count <= 0 or count > _MAX_SUBSCRIPTIONS:
        return _INVAL
    size = memory.data_len(caller)
    in_ptr, out_ptr, nevents_ptr = (
        in_ptr & 0xFFFFFFFF,
        out_ptr & 0xFFFFFFFF,
        nevents_ptr & 0xFFFFFFFF,
    )
    if (
        in_ptr + count * _SUBSCRIPTION.size > size
        or out_ptr + count * _EVENT.size > size
        or nevents_ptr + 4 > size
    ):
        return _FAULT
    raw = bytes(memory.read(caller, in_ptr, in_ptr + count * _SUBSCRIPTION.size))
    ready: list[tuple[int, int, int]] = []  # (userdata, errno, type)
    clocks: list[tuple[int, float]] = []  # (userdata, seconds from now)
    for index in range(count):
        userdata, tag, clock_id, timeout, _, flags = _SUBSCRIPTION.unpack_from(
            raw, index * _SUBSCRIPTION.size
        )
        if tag == _CLOCK:
            clocks.append((userdata, _wait_seconds(clock_id, timeout, flags)))
        elif tag in (_FD_READ, _FD_WRITE):
            # The only descriptors a guest has are captured stdio and preopened files: never
            # waiting for them is always right.
            ready.append((userdata, _SUCCESS, tag))
        else:
            return _INVAL
    if not ready and clocks:
        wait = min(seconds for _, seconds in clocks)
        remaining = context.deadline - time.monotonic()
        if wait > 0:
            with blocking():
                context.woken.wait(min(wait, max(remaining, 0.0)))
        if context.abort is None and wait >= remaining:
            context.fail(ActivityTimeout(timeout_ms=context.limits.timeout_ms))
        if context.abort is not None:
            return _INVAL  # the guest traps at its next epoch check (`fail` interrupted it)
        ready = [(userdata, _SUCCESS, _CLOCK) for userdata, seconds in clocks if seconds <= wait]
    events = b"".join(_EVENT.pack(userdata, errno, kind, 0, 0) for userdata, errno, kind in ready)
    memory.write(caller, events, out_ptr)
    memory.write(caller, struct.pack("<I", len(ready)), nevents_ptr)
    return _SUCCESS


def _wait_seconds(clock_id: int, timeout_ns: int, flags: int) -> float:
    if not flags & _ABSTIME:
        return timeout_ns / 1e9
    if clock_id == _REALTIME:
        return (timeout_ns - time.time_ns()) / 1e9
    # An absolute time on wasmtime's monotonic clock, whose origin the host cannot see: treat
    # it as due (the guest re-checks its clock and polls again, under fuel and the deadline).
    return 0.0


def define_wasi_overrides(linker: wasmtime.Linker) -> None:
    """Shadow wasmtime's blocking WASI calls on a core-module linker (after `define_wasi`)."""
    i32 = wasmtime.ValType.i32()
    linker.allow_shadowing = True
    try:
        linker.define_func(
            WASI_MODULE,
            "poll_oneoff",
            wasmtime.FuncType([i32, i32, i32, i32], [i32]),
            guarded(f"{WASI_MODULE}.poll_oneoff", _poll_oneoff, default=_INVAL),
            access_caller=True,
        )
        # Symlinks: wasmtime keeps a guest from following one out of its preopen, but let it
        # create one that points anywhere (`/etc`, `../..`) for host processes to follow
        # later. No activity needs them, so creating one is refused.
        linker.define_func(
            WASI_MODULE,
            "path_symlink",
            wasmtime.FuncType([i32] * 5, [i32]),
            _refuse_symlink,
        )
    finally:
        linker.allow_shadowing = False


def _refuse_symlink(*args: int) -> int:
    return _SYMLINK_REFUSED
