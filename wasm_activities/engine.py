"""The sandbox runtime: one wasmtime Engine per process, the compile cache, the thread pool,
and the single place where wasmtime failures become typed `SandboxError`s.

Knows nothing about workflows, registries or manifests.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import contextvars
import ctypes
import functools
import hashlib
import json
import math
import os
import resource
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import wasmtime
import wasmtime.component as wc
from wasmtime import _ffi as ffi  # stdin bytes are not wrapped by wasmtime-py

from . import _fastcall as fast
from ._pool import WorkerPool
from ._sandbox_process import SandboxProcesses, compile_bounded
from .abi import WASI_MODULE, Abi, check_core_module, check_header
from .cache import ArtifactCache, default_cache_dir
from .exceptions import (
    GUEST_TEXT_CHARS,
    ActivityTimeout,
    FuelExhausted,
    GuestError,
    InvalidInput,
    InvalidModule,
    InvalidOutput,
    MemoryLimitExceeded,
    NonZeroExit,
    OutputTooLarge,
    SandboxError,
    WasmTrap,
)
from .grants import Grants
from .host import (
    CallContext,
    define_component_host_imports,
    define_host_imports,
    stream_writer,
)
from .limits import MIB, Limits, RunResult, Usage
from .wasi_overrides import BLOCKING_WASI_IMPORTS, define_wasi_overrides

__all__ = ["PreparedModule", "SandboxRuntime", "get_runtime"]

COMPILE_TIMEOUT_ENV = "LOOM_COMPILE_TIMEOUT_S"
COMPILE_TIMEOUT_S = 60.0  # default compile-time limit of a module compiled in a child process
# Modules up to this size compile in-process: a process start costs more than their compile
# (real activities are 2-35 KB and compile in milliseconds; one huge function, the slowest
# shape measured, takes about 1.5 s at this size). Larger ones compile in a child process
# killed at the compile-time limit: the same shape took 37 s at 1.8 MB, and Cranelift cannot
# be interrupted in-process.
INPROCESS_COMPILE_BYTES = 64 * 1024
QUEUE_GRACE_S = 1.0  # past its deadline, a pooled call's caller stops waiting for the thread
TICK_SECONDS = 0.005  # epoch period: a timeout fires at most one tick late
MAX_CATCH_UP_TICKS = 400  # ticks made up at once after the ticker was held up (2 s)
UNMETERED_FUEL = 2**63 - 1
WASM_PAGE = 65536
STDERR_TAIL_BYTES = 2000
# A call on the event loop may run this many wasm instructions (about a millisecond) ...
INLINE_FUEL = 1_000_000
# ... and take this much CPU time (this thread's: on a busy machine the wall clock also counts
# the time other processes ran) before its module is sent to the thread pool for a while.
INLINE_MAX_S = 0.002
INLINE_BACKOFF_MAX = 1024  # pooled calls before a module that overran tries the loop again
# Concurrent core instances (and memories, tables) the pooling allocator keeps slots for.
POOLED_INSTANCES = 1000
_ENGINE_CONFIG = "epoch_interruption=1;consume_fuel=1;cranelift_opt_level=speed"
_CORE_ENGINE_CONFIG = _ENGINE_CONFIG + f";pooling={POOLED_INSTANCES}x4GiB"
_MEMORY, _FIRST, _SECOND = 0, 1, 2  # export slots of a core call
_DEFAULT_LIMITS = Limits()
_DEFAULT_GRANTS = Grants()


@dataclass(frozen=True, slots=True, eq=False)
class PreparedModule:
    """A compiled, pre-linked module; reusable across calls and threads (each call gets a fresh
    Store, so no state leaks between calls).

    Attributes:
        sha256: hex digest of the module bytes.
        abi: the ABI it was validated against.
    """

    sha256: str
    abi: Abi
    _pre: wasmtime.InstancePre | None
    _component: wc.Component | None
    _needs_wasi: bool = True
    _may_block: bool = True  # imports a call that waits (a WASI sleep): never inline
    _has_initialize: bool = False
    _pre_ptr: int = 0
    _artifact: str = ""  # a component's serialized artifact, which its sandbox process loads
    initial_memory_bytes: int = 0
    """Linear memory a core module starts with (mostly its stack); 0 when not known."""
    _inline: _InlineHistory = field(default_factory=lambda: _InlineHistory())


class _InlineHistory:
    """Whether a module's calls may run on the event loop: after a call overran, the next
    `skip` calls go to the pool, and each further overrun doubles that (up to a cap); a
    call that runs inline within budget halves it again, so a module that was slow once
    (a cold cache, a burst) comes back to the loop after a quiet period."""

    __slots__ = ("backoff", "skip")

    def __init__(self) -> None:
        self.skip = 0
        self.backoff = 1

    def overran(self) -> None:
        self.skip = self.backoff
        self.backoff = min(self.backoff * 2, INLINE_BACKOFF_MAX)

    def kept_within(self) -> None:
        self.backoff = max(self.backoff // 2, 1)


class _Overran(Exception):
    """An inline call needed more than INLINE_FUEL: run it again on the pool."""


def _is_pure(grants: Grants) -> bool:
    """Nothing a call with these grants does is visible outside its store (so it can be
    abandoned and re-run): no network, no writable directory."""
    return not grants.net and all(grant.mode != "rw" for grant in grants.fs)


def _no_memory() -> int:
    return 0


def _memory_bytes(store: fast.Store) -> int:
    return store.memory_size(_MEMORY) if store.has_memory else 0


def _json_bytes(value: Any) -> bytes:
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as err:
        raise InvalidInput(reason=str(err)) from err
    return text.encode()


def _parse_output(raw: bytes) -> Any:
    preview = raw[:80].decode("utf-8", "replace")
    if not raw.strip():
        raise InvalidOutput(reason="empty output", preview=preview)
    try:
        return json.loads(raw)
    except UnicodeDecodeError as err:
        raise InvalidOutput(reason=f"not UTF-8: {err.reason}", preview=preview) from err
    except json.JSONDecodeError as err:
        raise InvalidOutput(reason=err.msg + f" at byte {err.pos}", preview=preview) from err


def _backtrace(trap: wasmtime.Trap) -> list[str]:
    frames = []
    for frame in trap.frames:
        name = frame.func_name or f"func#{frame.func_index}"
        frames.append(f"{frame.module_name or 'module'}!{name}+{frame.func_offset:#x}")
    return frames


def _trap_code_from_text(message: str) -> wasmtime.TrapCode | None:
    """Components surface traps as WasmtimeError without a trap code; recover the two we need."""
    if "wasm trap: interrupt" in message:
        return wasmtime.TrapCode.INTERRUPT
    if "all fuel consumed" in message:
        return wasmtime.TrapCode.OUT_OF_FUEL
    return None


def _trap_reason(message: str, err: Exception) -> str:
    """The "Caused by" chain of a wasmtime error, without its (separately kept) backtrace."""
    if "Caused by:" in message:
        causes = message.split("Caused by:", 1)[1].splitlines()
        return "; ".join(line.strip().split(": ", 1)[-1] for line in causes if line.strip())
    lines = [line for line in message.splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


class _Call:
    """One call's limits, context and views of its (fresh) store."""

    def __init__(
        self,
        context: CallContext,
        limits: Limits,
        memory_bytes: Callable[[], int],
        fuel_left: Callable[[], int],
        fuel_given: int,
    ) -> None:
        self.context = context
        self.limits = limits
        self.memory_bytes = memory_bytes
        self._fuel_left = fuel_left
        self._fuel_given = fuel_given

    def near_memory_limit(self) -> bool:
        # wasmtime-py exposes no limiter callback, so a refused memory.grow is inferred: the call
        # failed (trap or exit) holding more than half of its memory limit. Allocators grow in
        # large steps (dlmalloc asked for ~1.7 MiB at 2.3 MiB of a 4 MiB limit), hence half.
        return self.memory_bytes() * 2 > self.limits.memory_bytes

    def fuel_used(self) -> int | None:
        if not self.limits.fuel:
            return None
        return self._fuel_given - self._fuel_left()

    def translate(self, err: Exception) -> SandboxError:
        """THE mapping from a wasmtime failure (or a host-recorded abort) to a typed error."""
        if self.context.abort is not None:
            return self.context.abort
        if isinstance(err, SandboxError):
            return err
        if isinstance(err, wasmtime.ExitTrap):
            if self.near_memory_limit():
                return MemoryLimitExceeded(memory_mb=self.limits.memory_mb, detail="exit")
            tail = self.context.logs[-STDERR_TAIL_BYTES:].decode("utf-8", "replace")
            return NonZeroExit(code=err.code, stderr_tail=tail)
        code = err.trap_code if isinstance(err, wasmtime.Trap) else _trap_code_from_text(str(err))
        if code is wasmtime.TrapCode.INTERRUPT:
            return ActivityTimeout(timeout_ms=self.limits.timeout_ms)
        if code is wasmtime.TrapCode.OUT_OF_FUEL:
            return FuelExhausted(fuel=self.limits.fuel)
        message = str(err.message if isinstance(err, wasmtime.Trap) else err).strip()
        if "exceeds memory limits" in message or "resource limit" in message:
            return MemoryLimitExceeded(memory_mb=self.limits.memory_mb, detail="at instantiation")
        # A refused memory.grow only returns -1 to the guest, which then aborts (unreachable)
        # or exits: only those endings can be the memory limit. A stack overflow, an
        # out-of-bounds access or a division by zero is the module's own bug, whatever
        # memory it holds.
        if (code is None or code is wasmtime.TrapCode.UNREACHABLE) and self.near_memory_limit():
            return MemoryLimitExceeded(memory_mb=self.limits.memory_mb, detail=message[:200])
        frames = _backtrace(err) if isinstance(err, wasmtime.Trap) else []
        return WasmTrap(
            trap=_trap_reason(message, err), trap_code=code.name if code else None, backtrace=frames
        )


def _initial_memory_bytes(module: wasmtime.Module) -> int:
    kinds = [e.type for e in module.exports] + [i.type for i in module.imports]
    pages = [kind.limits.min for kind in kinds if isinstance(kind, wasmtime.MemoryType)]
    return max(pages, default=0) * WASM_PAGE


def _address_space_unlimited() -> bool:
    """Whether the pooling allocator can reserve its slots: it maps POOLED_INSTANCES x 4 GiB
    of address space up front, and under any `ulimit -v` (even 64 GB) wasmtime panicked at
    start-up. With a limit, core modules use on-demand allocation (slower, but running)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    return soft == resource.RLIM_INFINITY


def _engine_config(*, pooling: bool) -> wasmtime.Config:
    config = wasmtime.Config()
    config.epoch_interruption = True
    config.consume_fuel = True
    config.cranelift_opt_level = "speed"
    if pooling:
        # wasmtime-py has no wrapper for the pooling allocator; the C API does
        pool = ffi.wasmtime_pooling_allocation_config_new()
        for setter, value in (
            (ffi.wasmtime_pooling_allocation_config_total_core_instances_set, POOLED_INSTANCES),
            (ffi.wasmtime_pooling_allocation_config_total_memories_set, POOLED_INSTANCES),
            (ffi.wasmtime_pooling_allocation_config_total_tables_set, POOLED_INSTANCES),
            (ffi.wasmtime_pooling_allocation_config_max_memory_size_set, 4096 * MIB),
            (ffi.wasmtime_pooling_allocation_config_table_elements_set, 100_000),
            (ffi.wasmtime_pooling_allocation_config_max_core_instance_size_set, 16 * MIB),
            (ffi.wasmtime_pooling_allocation_config_max_unused_warm_slots_set, 16),
            # reset a reused slot's first pages by memset, not madvise: no page fault on the
            # next call's first write (most activities stay within a few pages)
            (ffi.wasmtime_pooling_allocation_config_linear_memory_keep_resident_set, 256 * 1024),
            (ffi.wasmtime_pooling_allocation_config_table_keep_resident_set, 64 * 1024),
        ):
            setter(pool, value)
        ffi.wasmtime_pooling_allocation_strategy_set(config.ptr(), pool)
        ffi.wasmtime_pooling_allocation_config_delete(pool)
    return config


class SandboxRuntime:
    """Per-process sandbox: one Engine (epoch interruption + fuel), an epoch ticker thread, an
    in-memory and on-disk artifact cache, a thread pool that runs the wasm, and sandbox
    processes for components and calls with fs grants (see `_sandbox_process`).

    Thread-safe. Use one per process (`get_runtime()`), close it (or use it as a context
    manager) to stop the ticker thread, the pool and the sandbox processes.

    Args:
        cache_dir: artifact cache directory (default `$LOOM_WASM_CACHE` or ~/.cache/loom/wasm).
        max_workers: threads running wasm concurrently (default: CPU count).
        compile_timeout_s: compile-time limit of a module larger than INPROCESS_COMPILE_BYTES
            (default `$LOOM_COMPILE_TIMEOUT_S` or 60 s); past it `prepare` raises InvalidModule.
    """

    def __init__(
        self,
        *,
        cache_dir: str | Path | None = None,
        max_workers: int | None = None,
        compile_timeout_s: float | None = None,
        _in_sandbox_process: bool = False,
    ) -> None:
        # Core modules get the pooling allocator: a call reuses a reserved slot instead of
        # mapping and unmapping fresh memory (a call's C-side cost halves). Components keep
        # on-demand allocation: their instance, table and memory counts vary too much to size
        # slots for.
        pooling = _address_space_unlimited()
        self._pooling = pooling
        self.compile_timeout_s = compile_timeout_s or float(
            os.environ.get(COMPILE_TIMEOUT_ENV) or COMPILE_TIMEOUT_S
        )
        self.engine = wasmtime.Engine(_engine_config(pooling=pooling))
        self._engine_ptr = fast.pointer(self.engine.ptr())
        self._component_engine = wasmtime.Engine(_engine_config(pooling=False))
        directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self._targets = {  # is_component -> (engine, artifact cache)
            False: (
                self.engine,
                ArtifactCache(directory, _CORE_ENGINE_CONFIG if pooling else _ENGINE_CONFIG),
            ),
            True: (self._component_engine, ArtifactCache(directory, _ENGINE_CONFIG)),
        }
        self._linker = wasmtime.Linker(self.engine)
        self._linker.define_wasi()
        define_wasi_overrides(self._linker)
        define_host_imports(self._linker)
        self._component_linker = wc.Linker(self._component_engine)
        self._component_linker.add_wasip2()
        define_component_host_imports(self._component_linker)
        self._prepared: dict[tuple[str, Abi], PreparedModule] = {}
        self._lock = threading.Lock()
        self._pool = WorkerPool(max_workers or os.cpu_count() or 2, "loom-wasm")
        # Components and calls with fs grants run in sandbox processes (the same runtime
        # inside one runs them itself: its parent kills it).
        self._processes: SandboxProcesses | None = None
        if not _in_sandbox_process:
            self._processes = SandboxProcesses(str(directory), self._pool.max_workers)
        self._spill_dir: tempfile.TemporaryDirectory[str] | None = None
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, name="loom-wasm-epoch", daemon=True)
        self._ticker.start()
        self._closed = False
        _live_runtimes.add(self)

    def _tick(self) -> None:
        """Advance the epoch with real time: a tick this thread missed (it needs the GIL, and
        a busy machine deschedules it) is made up at the next one, so deadlines do not stretch
        with contention (a 3 s limit held 4.6-5.5 s under slow host calls)."""
        ticks = 0
        began = time.monotonic()
        while not self._stop.wait(TICK_SECONDS):
            due = int((time.monotonic() - began) / TICK_SECONDS)
            for _ in range(min(max(due - ticks, 1), MAX_CATCH_UP_TICKS)):
                self.engine.increment_epoch()
                self._component_engine.increment_epoch()
            ticks = max(ticks + 1, due)

    # -- preparing -------------------------------------------------------------------------

    def prepare(self, module: bytes, abi: Abi | str) -> PreparedModule:
        """Validate, compile (or load from the artifact cache) and pre-link `module`.

        Cached by sha256 in memory and on disk. Raises InvalidModule naming what is wrong
        (bad bytes, a missing or mistyped export, an unsupported import).
        """
        try:
            abi = Abi(abi)
        except ValueError as err:
            raise ValueError(f"abi must be one of {[a.value for a in Abi]}, got {abi!r}") from err
        sha256 = hashlib.sha256(module).hexdigest()
        key = (sha256, abi)
        prepared = self._prepared.get(key)
        if prepared is not None:
            return prepared
        check_header(module, abi)
        if abi is Abi.COMPONENT:
            component = self._load(module, sha256, abi, wc.Component)
            self._check_component(component)
            prepared = PreparedModule(
                sha256, abi, None, component, _artifact=self._artifact_path(abi, sha256, component)
            )
            if self._processes is not None:
                try:
                    self._processes.preload(sha256, abi.value, prepared._artifact)
                except (OSError, EOFError) as err:
                    raise InvalidModule(
                        abi=abi, problem="its sandbox process could not start or load it"
                    ) from err
        else:
            compiled = self._load(module, sha256, abi, wasmtime.Module)
            prepared = self._prepare_core(
                sha256, abi, compiled, self._artifact_path(abi, sha256, compiled)
            )
        with self._lock:
            return self._prepared.setdefault(key, prepared)

    def _prepare_core(
        self, sha256: str, abi: Abi, compiled: wasmtime.Module, artifact: str
    ) -> PreparedModule:
        check_core_module(compiled, abi)
        try:
            pre = self._linker.instantiate_pre(compiled)
        except wasmtime.WasmtimeError as err:
            raise InvalidModule(abi=abi, problem=str(err).splitlines()[0]) from err
        return PreparedModule(
            sha256,
            abi,
            pre,
            None,
            _needs_wasi=abi is Abi.COMMAND
            or any(imp.module == WASI_MODULE for imp in compiled.imports),
            _may_block=any(
                imp.module == WASI_MODULE and imp.name in BLOCKING_WASI_IMPORTS
                for imp in compiled.imports
            ),
            _has_initialize=any(e.name == "_initialize" for e in compiled.exports),
            initial_memory_bytes=_initial_memory_bytes(compiled),
            _pre_ptr=fast.pointer(pre.ptr()),
            _artifact=artifact,
        )

    def _target(self, abi: Abi | str) -> tuple[wasmtime.Engine, ArtifactCache]:
        """The engine that compiles and runs `abi`'s modules, and its artifact cache."""
        return self._targets[Abi(abi) is Abi.COMPONENT]

    def _load(self, module: bytes, sha256: str, abi: Abi, kind: Any) -> Any:
        engine, artifacts = self._target(abi)
        path = artifacts.path(sha256)
        try:
            # read, not mmap (deserialize_file): a file truncated under a live mapping is SIGBUS
            return kind.deserialize(engine, path.read_bytes())
        except FileNotFoundError:
            pass
        except wasmtime.WasmtimeError:
            path.unlink(missing_ok=True)  # stale or corrupt: recompile below
        if len(module) > INPROCESS_COMPILE_BYTES:
            # Cranelift cannot be interrupted: a large module compiles in a child process that
            # is killed at the limit, and its artifact is loaded here.
            artifact = compile_bounded(
                module,
                component=abi is Abi.COMPONENT,
                pooling=self._pooling and abi is not Abi.COMPONENT,
                timeout_s=self.compile_timeout_s,
                abi=abi,
            )
            compiled = kind.deserialize(engine, artifact)
        else:
            try:
                compiled = kind(engine, module)
            except wasmtime.WasmtimeError as err:
                raise InvalidModule(abi=abi, problem=str(err).strip().splitlines()[0]) from err
            artifact = compiled.serialize()
        with contextlib.suppress(OSError):  # a read-only cache only costs a recompile next time
            artifacts.store(sha256, artifact)
        return compiled

    def _artifact_path(self, abi: Abi, sha256: str, compiled: Any) -> str:
        """Where a sandbox process finds a module's artifact: the cache, or (when the cache
        is read-only) a private directory removed on close."""
        path = self._target(abi)[1].path(sha256)
        if path.exists():
            return str(path)
        with self._lock:
            if self._spill_dir is None:
                self._spill_dir = tempfile.TemporaryDirectory(prefix="loom-wasm-")
        spilled = Path(self._spill_dir.name) / f"{sha256}-{abi.value}.cwasm"
        spilled.write_bytes(compiled.serialize())
        return str(spilled)

    def load_artifact(self, sha256: str, abi: Abi | str, path: str) -> PreparedModule:
        """A module from its serialized artifact (what a sandbox process runs)."""
        abi = Abi(abi)
        engine = self._target(abi)[0]
        if abi is Abi.COMPONENT:
            component = wc.Component.deserialize(engine, Path(path).read_bytes())
            self._check_component(component)
            return PreparedModule(sha256, abi, None, component)
        compiled = wasmtime.Module.deserialize(engine, Path(path).read_bytes())
        return self._prepare_core(sha256, abi, compiled, path)

    def _check_component(self, component: wc.Component) -> None:
        if component.get_export_index("run") is None:
            raise InvalidModule(abi=Abi.COMPONENT, problem="missing export 'run'")

    def compile_uncached(self, module: bytes, abi: Abi | str) -> None:
        """Compile without touching any cache (for benchmarks comparing against cache loads)."""
        kind = wc.Component if Abi(abi) is Abi.COMPONENT else wasmtime.Module
        kind(self._target(abi)[0], module)

    def load_cached(self, sha256: str, abi: Abi | str) -> None:
        """Deserialize an artifact from the disk cache (for benchmarks)."""
        kind = wc.Component if Abi(abi) is Abi.COMPONENT else wasmtime.Module
        engine, artifacts = self._target(abi)
        kind.deserialize(engine, artifacts.path(sha256).read_bytes())

    # -- running ---------------------------------------------------------------------------

    async def run(
        self,
        module: PreparedModule,
        input: Any,
        *,
        limits: Limits = _DEFAULT_LIMITS,
        grants: Grants = _DEFAULT_GRANTS,
        secrets: Mapping[str, str] | None = None,
    ) -> RunResult:
        """Run `module` on `input` (any JSON value); see `run_sync`.

        Short calls of side-effect-free reactors (no network grant, no writable directory) run
        right here on the event loop: a thread hand-off costs more than the call. Such a call
        is capped at `INLINE_FUEL` instructions; one that needs more is abandoned and run again
        on the thread pool with its full limits (safe: a fresh store, and nothing it could do
        is visible outside it), and that module stays off the loop for a while. Everything else
        runs on the thread pool.

        Cancelling the awaiting task does not stop a pooled call early: it still ends at its
        timeout at the latest.
        """
        if self._closed:
            raise RuntimeError("SandboxRuntime is closed; create a new one or use get_runtime()")
        inline = module._inline
        if (
            inline.skip == 0
            and module.abi is Abi.REACTOR
            and not module._may_block
            and _is_pure(grants)
        ):
            started = time.thread_time()
            keep: list[Callable[[], None]] = []
            try:
                result = self._execute(module, input, limits, grants, secrets, keep, INLINE_FUEL)
            except _Overran:
                inline.overran()
            except SandboxError:
                # A failing call (a trap, a timeout, a denied capability) says nothing about
                # the next one being short: keep the module off the loop for a while.
                inline.overran()
                raise
            else:
                if time.thread_time() - started > INLINE_MAX_S:
                    inline.overran()
                else:
                    inline.kept_within()
                return result
            finally:
                _teardown(keep)
        elif inline.skip > 0:
            inline.skip -= 1
        loop = asyncio.get_running_loop()
        future: asyncio.Future[RunResult] = loop.create_future()
        # The limit covers time queued for a thread too (schedule-to-close): a 200 ms call
        # waited 52 s in the queue behind slow ones and then got its full 200 ms.
        # In the caller's context: an HTTP request's span then joins the caller's trace.
        execute = functools.partial(
            self._execute,
            module,
            input,
            limits,
            grants,
            secrets,
            queued_at=time.monotonic(),
        )
        call = functools.partial(contextvars.copy_context().run, execute)
        self._pool.submit(functools.partial(_run_for_loop, loop, future, call))
        try:
            # A call still queued at its deadline is answered then; when a thread reaches it,
            # it finds its time gone and ends at once.
            return await asyncio.wait_for(
                asyncio.shield(future), limits.timeout_ms / 1000 + QUEUE_GRACE_S
            )
        except TimeoutError:
            future.add_done_callback(_discard)  # its late outcome is nobody's any more
            raise ActivityTimeout(timeout_ms=limits.timeout_ms) from None

    def run_sync(
        self,
        module: PreparedModule,
        input: Any,
        *,
        limits: Limits = _DEFAULT_LIMITS,
        grants: Grants = _DEFAULT_GRANTS,
        secrets: Mapping[str, str] | None = None,
        _queued_at: float | None = None,
    ) -> RunResult:
        """Run `module` on `input` in the calling thread with a fresh Store.

        Returns the parsed JSON output, usage and logs. Raises a `SandboxError` subclass for
        every failure; the runtime stays usable after any of them.
        """
        if self._closed:
            raise RuntimeError("SandboxRuntime is closed; create a new one or use get_runtime()")
        keep: list[Callable[[], None]] = []
        try:
            return self._execute(module, input, limits, grants, secrets, keep, queued_at=_queued_at)
        finally:
            _teardown(keep)

    def _execute(
        self,
        module: PreparedModule,
        input: Any,
        limits: Limits,
        grants: Grants,
        secrets: Mapping[str, str] | None,
        keep: list[Callable[[], None]],
        inline_fuel: int | None = None,
        *,
        queued_at: float | None = None,
    ) -> RunResult:
        """One call. The Store's teardown is appended to `keep` so the caller decides when it
        runs (dropping a Store unmaps its memory, better spent after the result is handed over).

        `inline_fuel`: run on the calling (event loop) thread capped at this much fuel, holding
        the GIL when the module has no WASI streams; raises `_Overran` past the cap.
        """
        payload = _json_bytes(input)
        started = time.monotonic() if queued_at is None else queued_at
        left = limits.timeout_ms / 1000 - (time.monotonic() - started)
        if left <= 0:
            raise ActivityTimeout(timeout_ms=limits.timeout_ms)  # its time went in the queue
        fuel = limits.fuel or UNMETERED_FUEL
        store_fuel = fuel if inline_fuel is None else min(fuel, inline_fuel)
        capped = store_fuel < fuel
        ticks = math.ceil(left / TICK_SECONDS) + 1
        if self._processes is not None and (module.abi is Abi.COMPONENT or grants.fs):
            # A component's blocking WASI is out of the epoch's reach, and files a guest opens
            # count against its process's descriptor limit: see _sandbox_process.
            return self._processes.run(module, input, limits, grants, dict(secrets or {}), started)
        if module.abi is Abi.COMPONENT:
            wstore = wasmtime.Store(self._component_engine)
            keep.append(wstore.close)
            wstore.set_limits(memory_size=limits.memory_bytes, table_elements=100_000)
            wstore.set_fuel(fuel)
            wstore.set_epoch_deadline(ticks)
            interrupt: Callable[[], None] = functools.partial(_interrupt_component, wstore)
            memory_bytes: Callable[[], int] = _no_memory
            fuel_left: Callable[[], int] = wstore.get_fuel
        else:
            store = fast.Store(
                self._engine_ptr,
                memory_bytes=limits.memory_bytes,
                fuel=store_fuel,
                deadline=ticks,
            )
            keep.append(store.delete)
            store.set_hold_gil(inline_fuel is not None and not module._needs_wasi)
            interrupt, fuel_left = store.interrupt, store.fuel_left
            memory_bytes = functools.partial(_memory_bytes, store)
        context = CallContext(
            limits=limits,
            grants=grants,
            secrets=dict(secrets or {}),
            deadline=started + limits.timeout_ms / 1000,
            interrupt=interrupt,
        )
        call = _Call(context, limits, memory_bytes, fuel_left, store_fuel)
        with context:
            try:
                if module.abi is Abi.COMPONENT:
                    wstore.set_wasi(self._wasi_config(context, grants, None))
                    raw = self._invoke_component(module, wstore, call, payload)
                else:
                    if module._needs_wasi:
                        stdin = payload if module.abi is Abi.COMMAND else None
                        store.set_wasi(self._wasi_config(context, grants, stdin))
                    raw = self._invoke_core(module, store, call, payload)
            except (wasmtime.WasmtimeError, wasmtime.Trap, SandboxError) as err:
                error = call.translate(err)
                if capped and isinstance(error, FuelExhausted):
                    raise _Overran from None
                raise error from None
            if context.abort is not None:
                raise context.abort
        output = _parse_output(raw)
        usage = Usage.model_construct(
            wall_ms=(time.monotonic() - started) * 1000,
            fuel_used=call.fuel_used(),
            peak_memory_bytes=memory_bytes(),
            output_bytes=len(raw),
            http_calls=context.http_calls,
            egress=context.egress,
        )
        logs = context.logs.decode("utf-8", "replace")
        return RunResult.model_construct(
            output=output, usage=usage, logs=logs
        )  # fields typed above

    def _wasi_config(
        self, context: CallContext, grants: Grants, stdin: bytes | None
    ) -> wasmtime.WasiConfig:
        """WASI with nothing inherited: env, files and stdio exist only as granted/captured."""
        wasi = wasmtime.WasiConfig()
        env = [(name, os.environ[name]) for name in grants.env if name in os.environ]
        if env:
            wasi.env = env
        # command: stdout is the output; reactor/component: stdout is just more log
        wasi.stdout_custom = stream_writer(context, is_output=stdin is not None)
        if stdin is not None:
            _set_stdin(wasi, stdin)
        wasi.stderr_custom = stream_writer(context, is_output=False)
        for grant in grants.fs:
            host = Path(grant.host).resolve()
            if not host.is_dir():
                raise ValueError(
                    f"fs grant {grant.host!r} -> {grant.guest!r}: the host directory does not "
                    "exist on this worker; create it or fix the activity's [grants]"
                )
            # fs_mutable=False opens the preopen read-only: WASI refuses writes, creates,
            # renames and deletes under it (tested, not assumed)
            wasi.preopen_dir(str(host), grant.guest, grant.mode == "rw")
        return wasi

    def _invoke_core(
        self, module: PreparedModule, store: fast.Store, call: _Call, payload: bytes
    ) -> bytes:
        assert module._pre_ptr  # core ABIs always have an InstancePre
        store.instantiate(module._pre_ptr)  # also looks up "memory" into slot _MEMORY
        if module.abi is Abi.COMMAND:
            store.export(_FIRST, b"_start")
            try:
                store.call(_FIRST, results=0)
            except wasmtime.ExitTrap as exit_trap:
                if exit_trap.code != 0:
                    raise
            return bytes(call.context.output)
        if module._has_initialize:
            store.export(_FIRST, b"_initialize")
            store.call(_FIRST, results=0)
        # exports were checked by check_core_module, so these lookups cannot miss
        store.export(_FIRST, b"alloc")
        store.export(_SECOND, b"run")
        ptr = int(store.call(_FIRST, len(payload))[0].of.i32)
        if payload and (ptr <= 0 or not store.write(_MEMORY, ptr, payload)):
            raise MemoryLimitExceeded(memory_mb=call.limits.memory_mb, detail="alloc(input) failed")
        packed = int(store.call(_SECOND, ptr, len(payload))[0].of.i64)
        failed = packed < 0
        packed = -packed if failed else packed
        out_ptr, out_len = (packed >> 32) & 0xFFFFFFFF, packed & 0xFFFFFFFF
        if not failed and out_len > call.limits.max_output_bytes:
            raise OutputTooLarge(limit=call.limits.max_output_bytes)
        size = out_len
        if failed:  # an error message is read only as far as an error keeps it (<= 4 B/char)
            out_len = min(out_len, 4 * GUEST_TEXT_CHARS)
        raw = store.read(_MEMORY, out_ptr, out_len)
        if raw is None:
            raise InvalidOutput(
                reason=f"run returned ptr={out_ptr} len={out_len} outside linear memory",
                preview="",
            )
        if failed:
            raise GuestError.reported(raw.decode("utf-8", "replace"), size=size)
        return raw

    def _invoke_component(
        self, module: PreparedModule, store: wasmtime.Store, call: _Call, payload: bytes
    ) -> bytes:
        assert module._component is not None
        instance = self._component_linker.instantiate(store, module._component)
        run = instance.get_func(store, "run")
        if run is None:
            raise InvalidModule(abi=Abi.COMPONENT, problem="missing export 'run'")
        result = run(store, payload.decode())
        run.post_return(store)
        tag = getattr(result, "tag", "ok")
        text = getattr(result, "payload", result)
        if not isinstance(text, str):
            raise InvalidModule(abi=Abi.COMPONENT, problem="run must return result<string, string>")
        if tag == "err":
            raise GuestError.reported(text)
        raw = text.encode()
        if len(raw) > call.limits.max_output_bytes:
            raise OutputTooLarge(limit=call.limits.max_output_bytes)
        return raw

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the ticker thread and the pool (waits for running calls). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._pool.shutdown()
        if self._processes is not None:
            self._processes.close()
        if self._spill_dir is not None:
            self._spill_dir.cleanup()
        self._stop.set()
        self._ticker.join()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _run_for_loop(
    loop: asyncio.AbstractEventLoop,
    future: asyncio.Future[RunResult],
    call: Callable[[list[Callable[[], None]]], RunResult],
) -> Callable[[], None]:
    """Pool job of `run`: hand the outcome to the loop, return the Store teardown for later."""
    keep: list[Callable[[], None]] = []
    try:
        result = call(keep)
    except BaseException as err:  # every outcome, including errors, belongs to the awaiting task
        _settle_soon(loop, future, None, err)
    else:
        _settle_soon(loop, future, result, None)
    return functools.partial(_teardown, keep)


def _discard(future: asyncio.Future[RunResult]) -> None:
    if not future.cancelled():
        future.exception()


def _interrupt_component(store: wasmtime.Store) -> None:
    """See `_fastcall.Store.interrupt`: the deadline alone is read too late, fuel is not."""
    store.set_epoch_deadline(0)
    with contextlib.suppress(wasmtime.WasmtimeError):
        store.set_fuel(0)


def _teardown(keep: list[Callable[[], None]]) -> None:
    for teardown in keep:
        teardown()


_Outcome = tuple["asyncio.Future[RunResult]", RunResult | None, BaseException | None]
_settling: dict[asyncio.AbstractEventLoop, list[_Outcome]] = {}
_settling_lock = threading.Lock()


def _settle_soon(
    loop: asyncio.AbstractEventLoop,
    future: asyncio.Future[RunResult],
    result: RunResult | None,
    error: BaseException | None,
) -> None:
    """Hand an outcome to its loop; outcomes finishing before the loop gets to them share one
    wake-up (each `call_soon_threadsafe` costs the loop a self-pipe write and read)."""
    with _settling_lock:
        waiting = _settling.setdefault(loop, [])
        waiting.append((future, result, error))
        if len(waiting) > 1:
            return
    try:
        loop.call_soon_threadsafe(_settle_all, loop)
    except RuntimeError:  # the loop closed while we ran: nobody is waiting
        with _settling_lock:
            _settling.pop(loop, None)


def _settle_all(loop: asyncio.AbstractEventLoop) -> None:
    with _settling_lock:
        outcomes = _settling.pop(loop, [])
    for future, result, error in outcomes:
        _settle(future, result, error)


def _settle(
    future: asyncio.Future[RunResult], result: RunResult | None, error: BaseException | None
) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)  # type: ignore[arg-type]  # result is set when error is None


def _set_stdin(wasi: wasmtime.WasiConfig, payload: bytes) -> None:
    """Feed stdin from memory (wasmtime-py only wraps stdin_file, which would need a temp file).

    wasi_config_set_stdin_bytes takes ownership of the byte vector it is given.
    """
    vec = ffi.wasm_byte_vec_t()
    data = (ffi.wasm_byte_t * len(payload)).from_buffer_copy(payload)
    ffi.wasm_byte_vec_new(ctypes.byref(vec), len(payload), data)
    ffi.wasi_config_set_stdin_bytes(wasi.ptr(), ctypes.byref(vec))


# wasmtime drops WASI output streams on its own I/O threads, which call back into Python; if
# that happens during interpreter finalization the process aborts. Closing every live runtime
# at exit (before finalization) lets those drops finish while Python can still run them.
_live_runtimes: weakref.WeakSet[SandboxRuntime] = weakref.WeakSet()


@atexit.register
def _close_live_runtimes() -> None:
    for runtime in list(_live_runtimes):
        runtime.close()


_default: SandboxRuntime | None = None
_default_lock = threading.Lock()


def get_runtime() -> SandboxRuntime:
    """The process-wide default runtime, created on first use (closed at interpreter exit)."""
    global _default
    with _default_lock:
        if _default is None or _default._closed:
            _default = SandboxRuntime()
        return _default
