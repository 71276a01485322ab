"""A granted server that misbehaves cannot hold an activity past its deadline, and what the
host sends is what the grant allows: the Host pinned, one request, the query kept, no fragment,
no secret in any common encoding coming back into the guest."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import pytest

from tests.wasm_activities.conftest import LoopbackServer
from tests.wasm_activities.test_host import SECRET, call, xor_hex
from wasm_activities import ActivityTimeout, Grants, Limits, PreparedModule, SandboxRuntime

pytestmark = pytest.mark.timeout(600)  # the first test may build the module

Prepared = Callable[[str], PreparedModule]
LATE_S = 2.5  # a 1 s activity ends within this, even on a loaded machine


def _trickle_status(conn: socket.socket) -> None:
    for byte in b"HTTP/1.1 200 OK":
        conn.sendall(bytes([byte]))
        time.sleep(0.3)


def _trickle_headers(conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\n")
    for n in range(100):
        conn.sendall(f"X-{n}: {n}\r\n".encode())
        time.sleep(0.3)


def _endless_continue(conn: socket.socket) -> None:
    for _ in range(200):
        conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        time.sleep(0.1)


def _endless_trailers(conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n")
    for n in range(200):
        conn.sendall(f"T-{n}: x\r\n".encode())
        time.sleep(0.1)


def _trickle_body(conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
    for _ in range(1000):
        conn.sendall(b"x")
        time.sleep(0.05)


BEHAVIOURS = {
    "status line": _trickle_status,
    "headers": _trickle_headers,
    "100 Continue": _endless_continue,
    "chunked trailers": _endless_trailers,
    "body": _trickle_body,
}


@pytest.fixture
def hostile_server(request: pytest.FixtureRequest) -> Iterator[str]:
    """A raw TCP server on 127.0.0.1 acting out one misbehaviour per connection."""
    behaviour = BEHAVIOURS[request.param]
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=_act, args=(conn, behaviour), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        listener.close()


def _act(conn: socket.socket, behaviour: Callable[[socket.socket], None]) -> None:
    try:
        conn.recv(65536)
        behaviour(conn)
    except OSError:
        pass  # the host hung up at its deadline: that is the point
    finally:
        conn.close()


@pytest.mark.parametrize("hostile_server", list(BEHAVIOURS), indirect=True)
def test_a_trickling_server_cannot_outlast_the_deadline(
    runtime: SandboxRuntime, prepared: Prepared, hostile_server: str
) -> None:
    payload = {"request": json.dumps({"url": f"http://{hostile_server}/"}), "needle_xor": ""}
    began = time.monotonic()
    with pytest.raises(ActivityTimeout):
        runtime.run_sync(
            prepared("http_client.c"),
            payload,
            grants=Grants(net=[f"http://{hostile_server}"]),
            limits=Limits(timeout_ms=1000),
        )
    assert time.monotonic() - began < LATE_S


def _seen(out: dict[str, Any]) -> dict[str, Any]:
    response = json.loads(out["response"])
    seen: dict[str, Any] = json.loads(response["body"])["seen"]
    return seen


def test_the_host_decides_host_length_and_connection_and_keeps_the_query(
    runtime: SandboxRuntime, prepared: Prepared, http_server: LoopbackServer
) -> None:
    request = {
        "method": "POST",
        "url": f"http://{http_server.host}?q=1&r=two#fragment-never-sent",
        "headers": {"Host": "internal.admin", "content-length": "0", "X-Kept": "yes"},
        "body": "hello",
    }
    seen = _seen(call(runtime, prepared, request, Grants(net=[http_server.grant])))
    assert seen["path"] == "/?q=1&r=two"
    headers = {k.lower(): v for k, v in seen["headers"].items()}
    assert headers["host"] == http_server.host
    assert headers["content-length"] == "5" and seen["body"] == "hello"
    assert headers["connection"] == "close" and headers["x-kept"] == "yes"


@pytest.mark.parametrize("method", ["GET /other HTTP/1.1\r\nX:", "G E T", "", "PO\nST"])
def test_a_method_that_is_not_a_token_is_refused_before_connecting(
    runtime: SandboxRuntime, prepared: Prepared, http_server: LoopbackServer, method: str
) -> None:
    request = {"method": method or " ", "url": f"http://{http_server.host}/"}
    out = call(runtime, prepared, request, Grants(net=[http_server.grant]))
    assert out["code"] == -3 and "token" in out["response"]
    assert http_server.connections == 0


def test_an_echoed_secret_is_redacted_in_every_common_encoding(
    runtime: SandboxRuntime, prepared: Prepared, http_server: LoopbackServer
) -> None:
    """The server reflects the secret several ways; none reaches guest memory or output."""
    secret = SECRET + '"/+'
    forms = [
        json.dumps(secret)[1:-1],
        quote(secret, safe=""),
        base64.b64encode(secret.encode()).decode(),
        secret.encode().hex(),
    ]
    http_server.reply_extra = " | ".join(forms)
    grants = Grants(net=[http_server.grant], secrets=["API_KEY"])
    request = {"url": f"http://{http_server.host}/", "headers": {"X-Key": "{{secret:API_KEY}}"}}
    payload = {"request": json.dumps(request), "needle_xor": xor_hex(secret)}
    result = runtime.run_sync(
        prepared("http_client.c"), payload, grants=grants, secrets={"API_KEY": secret}
    )
    text = json.dumps(result.output)
    assert result.output["leaks"] == 0
    for form in forms:
        assert form not in text and form not in result.logs, form
    assert http_server.requests[0]["headers"]["X-Key"] == secret  # the server did get it


def test_substituting_many_placeholders_is_linear(
    runtime: SandboxRuntime, prepared: Prepared, http_server: LoopbackServer
) -> None:
    grants = Grants(net=[http_server.grant], secrets=["API_KEY"])
    body = "{{secret:API_KEY}}," * 50_000  # ~0.9 MB of placeholders
    request = {"method": "POST", "url": f"http://{http_server.host}/", "body": body}
    began = time.monotonic()
    out = call(runtime, prepared, request, grants, secrets={"API_KEY": "k"})
    assert time.monotonic() - began < 5
    assert out["code"] >= 0
    assert http_server.requests[0]["body"] == "k," * 50_000
