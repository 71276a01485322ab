"""Host side of one activity call: the `loom` imports (log, config_get, http_request, take),
captured stdout/stderr, and the per-call state they share.

Capability checks happen here, in Python, before any effect. Knows nothing about workflows.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import http.client
import json
import re
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, quote_plus, urlsplit

import wasmtime
import wasmtime.component as wc
from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from ._pool import blocking
from .exceptions import (
    ActivityTimeout,
    CapabilityDenied,
    LogTooLarge,
    OutputTooLarge,
    SandboxError,
    WasmTrap,
)
from .grants import Grants, is_loopback, split_url
from .limits import Limits

__all__ = [
    "HTTP_MAX_BODY_BYTES",
    "CallContext",
    "define_component_host_imports",
    "define_host_imports",
    "redact",
]

HOST_MODULE = "loom"
HTTP_MAX_BODY_BYTES = 4 * 1024 * 1024  # request and response bodies, each
HTTP_MAX_HEADER_COUNT = 64
# Negative results of loom.http_request; the JSON detail is then available through loom.take.
HTTP_NETWORK_ERROR = -2
HTTP_BAD_REQUEST = -3
HTTP_RESPONSE_TOO_LARGE = -4
SECRET_OPEN, SECRET_CLOSE = "{{secret:", "}}"
EGRESS_MAX_ENTRIES = 256
"""Journal entries kept per call; `Usage.http_calls` still counts every request."""
_TRACE_HEADERS = frozenset({"traceparent", "tracestate"})

_local = threading.local()
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HOST_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})


@dataclass(slots=True, weakref_slot=True)
class CallContext:
    """Mutable state of one call, reachable from host imports on the calling thread."""

    limits: Limits
    grants: Grants
    secrets: Mapping[str, str]
    deadline: float  # time.monotonic() value
    interrupt: Callable[[], None]  # makes the guest trap at its next epoch check
    output: bytearray = field(default_factory=bytearray)
    logs: bytearray = field(default_factory=bytearray)
    pending: bytes = b""
    http_calls: int = 0
    egress: list[dict[str, Any]] = field(default_factory=list)
    """The journal of this call's HTTP requests (see `_perform`)."""
    abort: SandboxError | None = None
    thread: int = field(default_factory=threading.get_ident)  # the one running the guest
    woken: threading.Event = field(default_factory=threading.Event)
    """Set on abort: a guest waiting in a host call (a WASI sleep) returns at once."""

    def fail(self, error: SandboxError) -> None:
        """Record the first fatal error and make the guest trap as soon as it runs again.

        A store may only be touched from the thread running it; a failure noticed elsewhere
        (wasmtime's stdio thread) is recorded, wakes a waiting host call, and ends the call
        at its next host import or its deadline."""
        if self.abort is None:
            self.abort = error
        self.woken.set()
        if threading.get_ident() == self.thread:
            self.interrupt()

    def write_output(self, data: bytes) -> None:
        if len(self.output) + len(data) > self.limits.max_output_bytes:
            self.fail(OutputTooLarge(limit=self.limits.max_output_bytes))
            return
        self.output += data

    def write_log(self, data: bytes) -> None:
        if len(self.logs) + len(data) > self.limits.max_log_bytes:
            self.fail(LogTooLarge(limit=self.limits.max_log_bytes))
            return
        self.logs += data

    def __enter__(self) -> CallContext:
        _local.context = self
        return self

    def __exit__(self, *exc: object) -> None:
        _local.context = None


def stream_writer(context: CallContext, *, is_output: bool) -> Callable[[bytes], int]:
    """A WASI custom stdout/stderr callback appending to the output or the logs.

    wasmtime calls it from its own I/O thread, so it cannot use the thread-local context; it
    holds a weak reference because a strong one would form a Store -> WasiConfig -> callback ->
    context -> Store cycle through C that the garbage collector cannot break (a leaked Store
    per call). It never raises: wasmtime would only print the exception.
    """
    ref = weakref.ref(context)

    def write(data: bytes) -> int:
        target = ref()
        if target is not None:
            (target.write_output if is_output else target.write_log)(data)
        return len(data)

    return write


def current() -> CallContext:
    context: CallContext | None = getattr(_local, "context", None)
    if context is None:  # a host import called outside run(): cannot happen via the runtime
        raise RuntimeError("loom host import called outside an activity call")
    return context


def redact(text: str, secrets: Mapping[str, str]) -> str:
    """Replace every secret value in `text`, and its common encodings (a granted server may
    echo it JSON-escaped, URL-encoded, base64 or hex), by its placeholder."""
    for name, value in secrets.items():
        if value:
            placeholder = f"{SECRET_OPEN}{name}{SECRET_CLOSE}"
            for form in _encodings(value):
                text = text.replace(form, placeholder)
    return text


@functools.lru_cache(maxsize=256)
def _encodings(value: str) -> tuple[str, ...]:
    """The forms of one secret to mask, longest first (cached: `redact` runs on every
    response header and the body, and the forms of a secret never change)."""
    raw = value.encode()
    forms = {
        value,
        json.dumps(value)[1:-1],
        json.dumps(value, ensure_ascii=False)[1:-1],
        quote(value, safe=""),
        quote_plus(value, safe=""),
        raw.hex(),
        raw.hex().upper(),
    }
    for encoded in (base64.b64encode(raw), base64.urlsafe_b64encode(raw)):
        text = encoded.decode()
        forms.update({text, text.rstrip("=")})
    return tuple(sorted((form for form in forms if form), key=len, reverse=True))


def _memory(caller: wasmtime.Caller) -> wasmtime.Memory:
    memory = caller.get("memory")
    if not isinstance(memory, wasmtime.Memory):
        raise RuntimeError("module does not export its memory")
    return memory


def _read(caller: wasmtime.Caller, ptr: int, length: int) -> bytes:
    memory = _memory(caller)
    if ptr < 0 or length < 0 or ptr + length > memory.data_len(caller):
        return b""
    return bytes(memory.read(caller, ptr, ptr + length))


def _log(caller: wasmtime.Caller, ptr: int, length: int) -> None:
    context = current()
    context.write_log(_read(caller, ptr, length) + b"\n")


def _config_get(caller: wasmtime.Caller, key_ptr: int, key_len: int) -> int:
    context = current()
    key = _read(caller, key_ptr, key_len).decode("utf-8", "replace")
    if key in context.grants.config:
        value = context.grants.config[key]
    elif key in context.grants.secrets:
        value = f"{SECRET_OPEN}{key}{SECRET_CLOSE}"  # the value itself never enters the guest
    else:
        return -1
    context.pending = value.encode()
    return len(context.pending)


def _take(caller: wasmtime.Caller, buf_ptr: int, buf_len: int) -> int:
    context = current()
    data = context.pending[: max(buf_len, 0)]
    memory = _memory(caller)
    if buf_ptr < 0 or buf_ptr + len(data) > memory.data_len(caller):
        return -1
    memory.write(caller, data, buf_ptr)
    context.pending = context.pending[len(data) :]
    return len(data)


def _http_request(caller: wasmtime.Caller, req_ptr: int, req_len: int) -> int:
    context = current()
    try:
        request = _parse_request(_read(caller, req_ptr, req_len))
    except ValueError as err:
        return _http_error(context, HTTP_BAD_REQUEST, str(err))
    url = request["url"]
    if not context.grants.allows_url(url):
        context.fail(CapabilityDenied(capability="http", requested=url, granted=context.grants.net))
        return -1
    try:
        request = _substitute_secrets(context, request)
    except CapabilityDenied as err:
        context.fail(err)
        return -1
    return _perform(context, url, request)


def _parse_request(raw: bytes) -> dict[str, Any]:
    try:
        request = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"request is not JSON: {err}") from err
    if not isinstance(request, dict) or not isinstance(request.get("url"), str):
        raise ValueError('request must be {"method", "url", "headers", "body"}')
    headers = request.get("headers") or {}
    body = request.get("body") or ""
    if not isinstance(headers, dict) or len(headers) > HTTP_MAX_HEADER_COUNT:
        raise ValueError("headers must be an object of at most 64 string values")
    if not all(isinstance(v, str) for v in headers.values()) or not isinstance(body, str):
        raise ValueError("header values and body must be strings")
    if len(body) > HTTP_MAX_BODY_BYTES:
        raise ValueError(f"request body larger than {HTTP_MAX_BODY_BYTES} bytes")
    method = str(request.get("method") or "GET").upper()
    if not _TOKEN.fullmatch(method) or len(method) > 32:
        raise ValueError("method must be an HTTP token such as GET or POST")
    # The host decides these: Host is pinned to the granted URL (a guest-set Host switches
    # virtual hosts behind a granted address), the length comes from the body (an override
    # smuggles a second request), and every request gets its own connection.
    headers = {k: v for k, v in headers.items() if k.strip().lower() not in _HOST_HEADERS}
    return {"method": method, "url": request["url"], "headers": headers, "body": body}


_PLACEHOLDER = re.compile(re.escape(SECRET_OPEN) + r"(.*?)" + re.escape(SECRET_CLOSE), re.DOTALL)


def _substitute(context: CallContext, text: str) -> str:
    """Fill every placeholder in one linear pass (a loop of find-and-splice was quadratic:
    80k placeholders took 27 s, far past any deadline)."""

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in context.grants.secrets or name not in context.secrets:
            raise CapabilityDenied(
                capability="secret", requested=name[:200], granted=list(context.grants.secrets)
            )
        return context.secrets[name]

    if SECRET_OPEN not in text:
        return text
    return _PLACEHOLDER.sub(fill, text)


def _substitute_secrets(context: CallContext, request: dict[str, Any]) -> dict[str, Any]:
    """Fill placeholders; the destination must not change (secrets cannot steer the host),
    and a secret travels in clear text only to this machine (plain http to loopback)."""
    target = split_url(request["url"])
    carries = any(
        SECRET_OPEN in text
        for text in (request["url"], request["body"], *request["headers"].values())
    )
    if carries and target[0] == "http" and not is_loopback(target[1]):
        raise CapabilityDenied(
            capability="secret over plain http to", requested=target[1], granted=[]
        )
    url = _substitute(context, request["url"])
    if split_url(url) != target:
        raise CapabilityDenied(
            capability="secret in host part of", requested=request["url"], granted=[]
        )
    headers = {k: _substitute(context, v) for k, v in request["headers"].items()}
    return {
        **request,
        "url": url,
        "headers": headers,
        "body": _substitute(context, request["body"]),
    }


def _remaining(context: CallContext) -> float:
    return context.deadline - time.monotonic()


def _perform(context: CallContext, shown_url: str, request: dict[str, Any]) -> int:
    """Send the request inside an HTTP client span carrying `traceparent`, and journal it.

    The journal entry is built from the guest's URL before secrets were substituted, keeps
    the path without its query, and never a body or a header value (see EGRESS_FIELDS).
    """
    scheme, host, port = split_url(shown_url)
    path = redact(urlsplit(shown_url).path or "/", context.secrets)
    entry: dict[str, Any] = {
        "method": request["method"],
        "scheme": scheme,
        "host": host,
        "port": port,
        "path": path,
        "status": None,
        "bytes_out": len(request["body"].encode()),
        "bytes_in": 0,
        "duration_ms": 0.0,
    }
    began = time.monotonic()
    with _client_span(entry) as span:
        # Without an SDK here (a sandbox process) the caller's span, if any, is the parent.
        if span is not None or trace.get_current_span().get_span_context().is_valid:
            headers = {
                k: v for k, v in request["headers"].items() if k.lower() not in _TRACE_HEADERS
            }
            propagate.inject(headers)
            request = {**request, "headers": headers}
        code = _exchange(context, shown_url, request, entry)
        if span is not None:
            if entry["status"] is not None:
                span.set_attribute("http.response.status_code", entry["status"])
            if entry.get("error") or (entry["status"] or 0) >= 500:
                span.set_attribute("error.type", entry.get("error") or str(entry["status"]))
                span.set_status(Status(StatusCode.ERROR))
    entry["duration_ms"] = round((time.monotonic() - began) * 1000, 3)
    if len(context.egress) < EGRESS_MAX_ENTRIES:
        context.egress.append(entry)
    return code


@contextlib.contextmanager
def _client_span(entry: Mapping[str, Any]) -> Iterator[Span | None]:
    """An OpenTelemetry HTTP client span (semantic conventions' names), or None when no SDK
    is installed: then nothing is spent on tracing."""
    provider = type(trace.get_tracer_provider()).__name__
    if "Proxy" in provider or "NoOp" in provider:
        yield None
        return
    with trace.get_tracer("loom.wasm_activities").start_as_current_span(
        entry["method"],
        kind=SpanKind.CLIENT,
        attributes={
            "http.request.method": entry["method"],
            "server.address": entry["host"],
            "server.port": entry["port"],
            "url.scheme": entry["scheme"],
            "url.path": entry["path"],
        },
        record_exception=False,
    ) as span:
        yield span


def _exchange(
    context: CallContext, shown_url: str, request: dict[str, Any], entry: dict[str, Any]
) -> int:
    """Send the (substituted) request; the activity's deadline bounds the whole exchange.

    A socket timeout bounds each wait, not their sum: a server trickling the status line,
    sending endless `100 Continue` or chunked trailers held a 1 s activity for 7-22 s. A
    watchdog shuts the socket down at the deadline, which ends whatever read is under way.
    """
    if _remaining(context) <= 0:
        context.fail(ActivityTimeout(timeout_ms=context.limits.timeout_ms))
        return HTTP_NETWORK_ERROR
    scheme, host, port = split_url(request["url"])
    parts = urlsplit(request["url"])
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")  # no fragment
    conn_type = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
    conn = conn_type(host, port, timeout=_remaining(context))
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        sock = conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    watchdog = threading.Timer(max(_remaining(context), 0.0), expire)
    watchdog.daemon = True
    context.http_calls += 1
    try:
        with blocking():
            watchdog.start()
            conn.request(
                request["method"],
                path,
                body=request["body"].encode(),
                headers={**request["headers"], "Connection": "close"},
            )
            response = conn.getresponse()
            body = _read_body(context, conn, response)
        entry["status"] = response.status
        entry["bytes_in"] = len(body) if body is not None else HTTP_MAX_BODY_BYTES
        if expired.is_set():
            raise TimeoutError
    except TimeoutError:
        entry["error"] = "timeout"
        context.fail(ActivityTimeout(timeout_ms=context.limits.timeout_ms))
        return HTTP_NETWORK_ERROR
    except ValueError:  # e.g. CR/LF in a header: http.client refuses to send it
        entry["error"] = "refused"
        # Never quote http.client's message: it repeats the (substituted) header value.
        return _http_error(
            context,
            HTTP_BAD_REQUEST,
            f"request to {shown_url} refused: a header name or value has characters HTTP "
            "forbids (CR, LF or other control characters)",
        )
    except (OSError, http.client.HTTPException) as err:
        entry["error"] = type(err).__name__
        if expired.is_set() or _remaining(context) <= 0:
            context.fail(ActivityTimeout(timeout_ms=context.limits.timeout_ms))
            return HTTP_NETWORK_ERROR
        detail = redact(f"{type(err).__name__}: {err}", context.secrets)
        return _http_error(context, HTTP_NETWORK_ERROR, f"request to {shown_url} failed: {detail}")
    finally:
        watchdog.cancel()
        conn.close()
    if body is None:
        entry["error"] = "response_too_large"
        return _http_error(context, HTTP_RESPONSE_TOO_LARGE, "response body larger than 4 MiB")
    # Redact field by field, before JSON escaping could split a secret's bytes.
    headers = {
        redact(k, context.secrets): redact(v, context.secrets) for k, v in response.getheaders()
    }
    text = redact(body.decode("utf-8", "replace"), context.secrets)
    context.pending = json.dumps(
        {"status": response.status, "headers": headers, "body": text}, ensure_ascii=False
    ).encode()
    return len(context.pending)


def _read_body(
    context: CallContext, conn: http.client.HTTPConnection, response: http.client.HTTPResponse
) -> bytes | None:
    """Read at most HTTP_MAX_BODY_BYTES, re-arming the socket timeout with the time left so a
    trickling server cannot hold the activity past its deadline. None when too large."""
    body = bytearray()
    while len(body) <= HTTP_MAX_BODY_BYTES:
        remaining = _remaining(context)
        if remaining <= 0:
            raise TimeoutError
        if conn.sock is not None:
            conn.sock.settimeout(remaining)
        chunk = response.read1(65536)
        if not chunk:
            return bytes(body)
        body += chunk
    return None


def _http_error(context: CallContext, code: int, message: str) -> int:
    context.pending = json.dumps({"error": message}).encode()
    return code


def guarded(name: str, func: Callable[..., Any], default: int | None) -> Callable[..., Any]:
    """Never let a host import (`name`: module.function) raise: wasmtime-py parks the
    exception in a process-global slot that a concurrent call could pick up. An unexpected
    failure aborts this call as a trap; so does calling it after the call was aborted."""

    def call(*args: Any) -> Any:
        context = getattr(_local, "context", None)
        if context is not None and context.abort is not None:
            context.interrupt()  # aborted off this thread (see CallContext.fail): stop now
            return default
        try:
            return func(*args)
        except Exception as err:  # any bug or surprise in a host import fails only this call
            if context is not None:
                message = redact(f"host import {name} failed: {err!r}", context.secrets)
                context.fail(WasmTrap(trap=message, trap_code=None, backtrace=[]))
            return default

    return call


def define_host_imports(linker: wasmtime.Linker) -> None:
    """Define the `loom` import module on a core-module linker (once per runtime)."""
    i32 = wasmtime.ValType.i32()
    imports: list[tuple[str, list[wasmtime.ValType], list[wasmtime.ValType], Any]] = [
        ("log", [i32, i32], [], _log),
        ("config_get", [i32, i32], [i32], _config_get),
        ("http_request", [i32, i32], [i32], _http_request),
        ("take", [i32, i32], [i32], _take),
    ]
    for name, params, results, func in imports:
        linker.define_func(
            HOST_MODULE,
            name,
            wasmtime.FuncType(params, results),
            guarded(f"{HOST_MODULE}.{name}", func, default=None if not results else -1),
            access_caller=True,
        )


HOST_IMPORTS = frozenset({"log", "config_get", "http_request", "take"})


COMPONENT_HOST_INTERFACE = "loom:activity/host@0.1.0"


def _component_log(store: object, message: str) -> None:
    current().write_log(message.encode() + b"\n")


def _component_config_get(store: object, key: str) -> str | None:
    context = current()
    if key in context.grants.config:
        return context.grants.config[key]
    if key in context.grants.secrets:
        return f"{SECRET_OPEN}{key}{SECRET_CLOSE}"
    return None


def define_component_host_imports(linker: wc.Linker) -> None:
    """Define the `loom:activity/host` interface (see sdk/loom.wit) on a component linker."""
    with linker.root() as root, root.add_instance(COMPONENT_HOST_INTERFACE) as host:
        host.add_func("log", _component_log)
        host.add_func("config-get", _component_config_get)
