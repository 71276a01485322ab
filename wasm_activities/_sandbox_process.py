"""Child processes that a wall-clock limit can always end: component calls, and compiles.

A WASI preview 2 component sleeps or waits in wasmtime's own native code
(`wasi:clocks/monotonic-clock` subscribe + `wasi:io/poll`), which neither epoch interruption nor
fuel reaches, and wasmtime-py cannot replace those imports (the `pollable` resource they return
belongs to wasmtime's WASI). A component that slept 5 s under a 500 ms limit held its thread the
whole 5 s. So components run in a child process (`SandboxProcesses`): the epoch deadline inside
it ends guest code on time as before, and when the child misses its deadline (blocked in native
code) the parent kills it, answers ActivityTimeout, and starts a replacement. Likewise a compile
runs in a one-shot child (`compile_bounded`), since Cranelift cannot be interrupted either.

Files a guest opens count against its process's descriptor limit, which each call sets to
`Limits.max_open_files` more than the process holds, so calls with fs grants run here too.

Serving children are forked from multiprocessing's fork server (which imported this package
once) and talk over a pipe: one JSON message per request, one per reply. The guest never sees
that pipe: its WASI stdio is captured in memory.
"""

from __future__ import annotations

import contextlib
import io
import json
import multiprocessing
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from multiprocessing import context, forkserver, popen_forkserver, process, reduction, spawn, util
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import propagate

from ._pool import blocking
from .exceptions import ActivityTimeout, InvalidModule, SandboxError, WasmTrap
from .limits import Limits, RunResult

if TYPE_CHECKING:
    from .engine import PreparedModule, SandboxRuntime
    from .grants import Grants

__all__ = ["SandboxProcesses", "compile_bounded"]

START_TIMEOUT_S = 120.0  # a child's start-up (imports, engine): generous for a loaded machine
KILL_GRACE_S = 0.3  # past the deadline, the parent stops waiting for the child and kills it
WATCHDOG_PERIOD_S = 0.5
ORPHAN_GRACE_S = 5.0  # past a deadline, a child nobody killed ends itself
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[1])


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = _PACKAGE_ROOT + (os.pathsep + path if path else "")
    return env


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "wasm_activities._sandbox_process", *args]


def compile_bounded(
    module: bytes, *, component: bool, pooling: bool, timeout_s: float, abi: Any
) -> bytes:
    """Compile `module` in a child process killed after `timeout_s`; the serialized artifact.

    Raises InvalidModule when the module does not compile or compiling took too long (a
    module can be built to take minutes in Cranelift, and nothing can stop it in-process).
    """
    kind = "component" if component else "core"
    try:
        done = subprocess.run(
            _command("compile", kind, "pooling" if pooling else "ondemand"),
            input=module,
            capture_output=True,
            timeout=timeout_s,
            env=_child_env(),
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise InvalidModule(
            abi=abi,
            problem=f"compiling took longer than {timeout_s:g} s (the compile-time limit, "
            "LOOM_COMPILE_TIMEOUT_S); make the module smaller or raise the limit",
        ) from None
    if done.returncode != 0:
        lines = done.stderr.decode("utf-8", "replace").strip().splitlines()
        raise InvalidModule(abi=abi, problem=lines[-1] if lines else f"exit {done.returncode}")
    return done.stdout


class _Child:
    """One serving child process, forked from the fork server (which imported this package
    once: a fresh interpreter takes about a second to import it, and five starting at once on
    a busy 2-core machine took 6 s each)."""

    def __init__(self, cache_dir: str) -> None:
        self.process, self.conn = _start_child(cache_dir)
        self.loaded: set[str] = set()
        if self.line(time.monotonic() + START_TIMEOUT_S) is None:  # the ready handshake
            self.close(kill=True)
            raise EOFError

    def load(self, key: str, artifact: str) -> None:
        """Load a module (`key`: sha256:abi) before its first call here (deserializing a
        large component takes a while: host work, not charged to the call's time). Raises
        EOFError on failure."""
        if key in self.loaded:
            return
        self.send({"load": key, "artifact": artifact})
        reply = self.line(time.monotonic() + START_TIMEOUT_S)
        if reply is None or "loaded" not in reply:
            raise EOFError
        self.loaded.add(key)

    def send(self, request: dict[str, Any]) -> None:
        self.conn.send_bytes(json.dumps(request).encode())

    def line(self, deadline: float) -> dict[str, Any] | None:
        """The next reply, or None when `deadline` passed first. Raises EOFError if it died."""
        left = deadline - time.monotonic()
        if left <= 0 or not self.conn.poll(left):
            return None
        reply: dict[str, Any] = json.loads(self.conn.recv_bytes())
        return reply

    def close(self, *, kill: bool = False) -> None:
        with contextlib.suppress(OSError, ValueError):
            if kill:
                self.process.kill()
            self.conn.close()  # a serving child exits at EOF
        self.process.join(2)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.process.close()


class _Popen(popen_forkserver.Popen):
    """multiprocessing's fork-server start, minus re-running the parent's `__main__` in the
    child: a worker's main is the `loom` script or the user's app, which must not run again
    (multiprocessing would, and refuse to start a child from an unguarded script). Otherwise
    `popen_forkserver.Popen._launch` as in CPython 3.11-3.13."""

    def _launch(self, process_obj: Any) -> None:
        prep_data = spawn.get_preparation_data(process_obj._name)
        prep_data.pop("init_main_from_path", None)
        prep_data.pop("init_main_from_name", None)
        buf = io.BytesIO()
        context.set_spawning_popen(self)
        try:
            reduction.dump(prep_data, buf)
            reduction.dump(process_obj, buf)
        finally:
            context.set_spawning_popen(None)
        fds = self._fds  # type: ignore[attr-defined]  # set by popen_forkserver.Popen
        self.sentinel, w = forkserver.connect_to_new_process(fds)
        parent_w = os.dup(w)  # the child's sentinel of its parent
        close_fds = util.close_fds  # type: ignore[attr-defined]  # untyped in typeshed
        self.finalizer = util.Finalize(self, close_fds, (parent_w, self.sentinel))
        with open(w, "wb", closefd=True) as f:
            f.write(buf.getbuffer())
        self.pid = forkserver.read_signed(self.sentinel)


class _Process(process.BaseProcess):
    _start_method = "forkserver"

    @staticmethod
    def _Popen(process_obj: Any) -> _Popen:
        return _Popen(process_obj)


_server_lock = threading.Lock()
_server_ready = False


def _start_child(cache_dir: str) -> tuple[_Process, Connection]:
    """Fork a serving child from the fork server (started, preloading this package, once)."""
    global _server_ready
    with _server_lock:
        if not _server_ready:
            forkserver.set_forkserver_preload(["wasm_activities.engine"])
            _server_ready = True
    ours, theirs = multiprocessing.Pipe()
    child = _Process(target=_serve, args=(theirs, cache_dir), name="loom-wasm-sandbox")
    child.daemon = True
    child.start()
    theirs.close()
    return child, ours


class SandboxProcesses:
    """Serving children for component calls and calls with fs grants: idle ones reused (one
    that loaded the module first, else the most recent), one spare kept ready so a call rarely
    waits for a start-up, a child killed when it misses a deadline and replaced at once.
    """

    def __init__(self, cache_dir: str, max_idle: int) -> None:
        self.cache_dir = cache_dir
        self.max_idle = max_idle
        self._lock = threading.Lock()
        self._idle: list[_Child] = []
        self._starting = 0
        self._spawners: list[threading.Thread] = []
        self._closed = False
        self._recent: tuple[str, str] | None = None  # the component a spare loads ahead

    def warm(self) -> None:
        """Start a spare child in the background (loading the component last preloaded)
        unless one is idle or on its way."""
        with self._lock:
            if self._closed or self._idle or self._starting:
                return
            self._starting += 1
            spawner = threading.Thread(target=self._start_spare, name="loom-wasm-spawn")
            self._spawners = [t for t in self._spawners if t.is_alive()] + [spawner]
        spawner.start()

    def _start_spare(self) -> None:
        try:
            child = _Child(self.cache_dir)
            if self._recent is not None:
                child.load(*self._recent)
        except Exception:  # a spare is an optimisation: the next call starts its own
            return
        finally:
            with self._lock:
                self._starting -= 1
        self._release(child)

    def preload(self, sha256: str, abi: str, artifact: str) -> None:
        """Have an idle child with this component loaded (what `prepare` waits for, so a
        first call does not pay for a process start-up); later spares load it too."""
        key = f"{sha256}:{abi}"
        with self._lock:
            self._recent = (key, artifact)
        self._release(self._acquire(key, artifact, spare=False))

    def _acquire(self, key: str, artifact: str, *, spare: bool = True) -> _Child:
        with self._lock:
            if self._closed:
                raise RuntimeError("SandboxRuntime is closed")
            # one that already loaded this component, else the most recently idle
            dead = [c for c in self._idle if not c.process.is_alive()]
            self._idle = [c for c in self._idle if c not in dead]
            ready = [c for c in self._idle if key in c.loaded] or self._idle
            child = ready[-1] if ready else None
            if child is not None:
                self._idle.remove(child)
        for gone in dead:  # ended on its own (its watchdog, the OOM killer): reaped here
            gone.close(kill=True)
        if child is None:
            child = _Child(self.cache_dir)
        try:
            child.load(key, artifact)
        except (OSError, EOFError):
            child.close(kill=True)
            raise
        if spare:
            self.warm()
        return child

    def _release(self, child: _Child) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < self.max_idle:
                self._idle.append(child)
                return
        child.close()

    def run(
        self,
        module: PreparedModule,
        input: Any,
        limits: Limits,
        grants: Grants,
        secrets: dict[str, str],
        started: float,
    ) -> RunResult:
        """One call in a child; the parent's wait ends at the deadline (plus a grace)."""
        began = time.monotonic()
        try:
            with blocking():
                child = self._acquire(f"{module.sha256}:{module.abi.value}", module._artifact)
        except (OSError, EOFError):
            raise WasmTrap(
                trap="the call's sandbox process could not start or load its module",
                trap_code=None,
                backtrace=[],
            ) from None
        # Starting a process and loading an artifact are host work, like prepare(): bounded
        # by START_TIMEOUT_S, not charged to the call (time queued before still is).
        started += time.monotonic() - began
        deadline = started + limits.timeout_ms / 1000
        request = {
            "module": f"{module.sha256}:{module.abi.value}",
            "artifact": module._artifact,
            "input": input,
            "elapsed_s": time.monotonic() - started,
            "limits": limits.model_dump(),
            "grants": grants.model_dump(),
            "secrets": secrets,
            # the worker's values now, not the fork server's from when it started
            "env": {name: os.environ.get(name) for name in grants.env},
            "trace": _trace_carrier(),
        }
        try:
            with blocking():
                child.send(request)
                reply = child.line(deadline + KILL_GRACE_S)
        except (OSError, EOFError):
            child.close(kill=True)
            raise WasmTrap(
                trap="the call's sandbox process ended unexpectedly",
                trap_code=None,
                backtrace=[],
            ) from None
        if reply is None:  # blocked in native code past its deadline
            child.close(kill=True)
            self.warm()  # its replacement starts now, not at the next call
            raise ActivityTimeout(timeout_ms=limits.timeout_ms)
        self._release(child)
        if "error" in reply:
            raise _error_from_json(reply["error"])
        if "value_error" in reply:
            raise ValueError(reply["value_error"])
        return RunResult.model_validate(reply["result"])

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
            spawners = list(self._spawners)
        for spawner in spawners:  # a spare it starts now is closed at its release
            spawner.join()
        for child in idle:
            child.close()


def _trace_carrier() -> dict[str, str]:
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def _error_from_json(data: dict[str, Any]) -> SandboxError:
    """Rebuild the typed error a child reported (`SandboxError.to_json`)."""
    from . import exceptions

    kind = getattr(exceptions, str(data.get("type")), None)
    if not (isinstance(kind, type) and issubclass(kind, SandboxError)):
        kind = SandboxError
    error = kind.__new__(kind)
    SandboxError.__init__(error, str(data.get("message")), **dict(data.get("details") or {}))
    return error


# -- the child side -----------------------------------------------------------------------


class _Watchdog:
    """Ends this child when its parent is gone or a call overran its deadline by far.

    The parent kills a child that misses a deadline, but a parent that was itself killed
    cannot; PR_SET_PDEATHSIG would not do either (it fires when the spawning *thread* exits,
    and pool threads come and go).
    """

    def __init__(self) -> None:
        self.parent = os.getppid()
        self.until = float("inf")  # monotonic time by which the running call must be over
        threading.Thread(target=self._watch, name="loom-wasm-watchdog", daemon=True).start()

    def _watch(self) -> None:
        while True:
            time.sleep(WATCHDOG_PERIOD_S)
            if os.getppid() != self.parent or time.monotonic() > self.until:
                os._exit(3)


def _load(
    runtime: SandboxRuntime, modules: dict[str, PreparedModule], key: str, artifact: str
) -> PreparedModule:
    if key not in modules:
        sha256, abi = key.split(":")
        modules[key] = runtime.load_artifact(sha256, abi, artifact)
    return modules[key]


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


@contextlib.contextmanager
def _open_files_capped(cap: int) -> Iterator[None]:
    """Let the call open at most `cap` more descriptors than this process holds now.

    One call at a time runs here and its store (with every file the guest opened) is dropped
    when it ends, so the process limit is a per-call cap: a guest opening 20,000 handles gets
    EMFILE at the cap, and the worker's own descriptors (another process) are never touched.
    RLIMIT_NOFILE bounds descriptor *numbers* (a new one takes the lowest free number below
    it), so the limit is the number below which exactly `cap` are free.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    held = [fd for fd in map(int, os.listdir("/proc/self/fd")) if _is_open(fd)]  # not listdir's
    limit = cap
    while (below := sum(1 for fd in held if fd < limit)) != limit - cap:
        limit = cap + below
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _serve(conn: Connection, cache_dir: str) -> None:
    """A serving child: one request at a time from `conn`, until the parent closes it."""
    from .engine import SandboxRuntime
    from .grants import Grants

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when a child ends
    runtime = SandboxRuntime(cache_dir=cache_dir, max_workers=1, _in_sandbox_process=True)
    modules: dict[str, PreparedModule] = {}
    watchdog = _Watchdog()
    conn.send_bytes(b'{"ready": true}')
    while True:
        try:
            request = json.loads(conn.recv_bytes())
        except EOFError:
            break
        if "load" in request:
            _load(runtime, modules, request["load"], request["artifact"])
            conn.send_bytes(b'{"loaded": true}')
            continue
        left = request["limits"]["timeout_ms"] / 1000 - request["elapsed_s"]
        watchdog.until = time.monotonic() + left + ORPHAN_GRACE_S
        limits = Limits.model_validate(request["limits"])
        for name, value in request["env"].items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        # The caller's span: the call's HTTP requests carry it as `traceparent`.
        token = otel_context.attach(propagate.extract(request.get("trace") or {}))
        try:
            module = _load(runtime, modules, request["module"], request["artifact"])
            with _open_files_capped(limits.max_open_files):
                result = runtime.run_sync(
                    module,
                    request["input"],
                    limits=limits,
                    grants=Grants.model_validate(request["grants"]),
                    secrets=request["secrets"],
                    _queued_at=time.monotonic() - request["elapsed_s"],
                )
            reply: dict[str, Any] = {"result": result.model_dump()}
        except SandboxError as err:
            reply = {"error": err.to_json()}
        except ValueError as err:  # a grant this worker cannot satisfy (a missing directory)
            reply = {"value_error": str(err)}
        except Exception as err:  # a host-side surprise fails this call only
            trap = WasmTrap(trap=f"sandbox process: {err!r}", trap_code=None, backtrace=[])
            reply = {"error": trap.to_json()}
        finally:
            otel_context.detach(token)
        watchdog.until = float("inf")
        conn.send_bytes(json.dumps(reply).encode())
    runtime.close()


def _compile(kind: str, allocation: str) -> None:
    import wasmtime
    import wasmtime.component as wc

    from .engine import _engine_config

    module = sys.stdin.buffer.read()
    engine = wasmtime.Engine(_engine_config(pooling=allocation == "pooling"))
    try:
        compiled: Any = (wc.Component if kind == "component" else wasmtime.Module)(engine, module)
    except wasmtime.WasmtimeError as err:
        sys.stderr.write(str(err).strip().splitlines()[0] + "\n")
        sys.exit(1)
    sys.stdout.buffer.write(compiled.serialize())


def main(argv: list[str]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when a child ends
    if argv[0] == "compile":
        _compile(argv[1], argv[2])
    else:
        raise SystemExit(f"unknown command {argv[0]!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
