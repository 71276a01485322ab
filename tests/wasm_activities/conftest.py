"""Fixtures for the sandbox tests: one runtime per session, modules built from committed
sources (examples, `modules/*.c`, inline WAT), and a loopback HTTP server that counts
connections."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.wasm_activities.build import BUILD_DIR, build_c, build_component, build_example
from wasm_activities import Abi, PreparedModule, SandboxRuntime

MODULES_DIR = Path(__file__).parent / "modules"
# Test modules under modules/: file (or componentize-py app directory) -> ABI.
TEST_MODULES = {
    "memory_bomb.c": Abi.REACTOR,
    "probe.c": Abi.COMMAND,
    "http_client.c": Abi.REACTOR,
    "big_output.c": Abi.COMMAND,
    "fail_exit.c": Abi.COMMAND,
    "chatty.c": Abi.REACTOR,
    "sleeper.c": Abi.REACTOR,
    "fd_hog.c": Abi.REACTOR,
    "py_sleeper": Abi.COMPONENT,
}
EXAMPLE_ABIS = {
    "echo": Abi.COMMAND,
    "word-count": Abi.REACTOR,
    "char-count": Abi.REACTOR,
    "py-greet": Abi.COMPONENT,
}


def build_test_module(name: str) -> Path:
    """Build one of TEST_MODULES (cached under .build/)."""
    abi = TEST_MODULES[name]
    if abi is Abi.COMPONENT:
        return build_component(MODULES_DIR / name)
    return build_c(MODULES_DIR / name, reactor=abi is Abi.REACTOR)


@pytest.fixture(scope="session")
def runtime() -> Iterator[SandboxRuntime]:
    # Artifacts are keyed by module hash + wasmtime version + config, so sharing them across
    # sessions is safe and saves recompiling the Python component each run.
    with SandboxRuntime(cache_dir=BUILD_DIR.parent / "wasm-artifacts") as rt:
        yield rt


@pytest.fixture(scope="session")
def wasm_module() -> Callable[[str], bytes]:
    """Bytes of an example (`"word-count"`) or a test module (`"probe.c"`), built on demand."""
    cache: dict[str, bytes] = {}

    def get(name: str) -> bytes:
        if name not in cache:
            path = build_test_module(name) if name in TEST_MODULES else build_example(name)
            cache[name] = path.read_bytes()
        return cache[name]

    return get


@pytest.fixture(scope="session")
def prepared(
    runtime: SandboxRuntime, wasm_module: Callable[[str], bytes]
) -> Callable[[str], PreparedModule]:
    """A prepared example or test module by name."""

    def get(name: str) -> PreparedModule:
        abi = TEST_MODULES.get(name) or EXAMPLE_ABIS[name]
        return runtime.prepare(wasm_module(name), abi)

    return get


@dataclass
class LoopbackServer:
    """HTTP server on 127.0.0.1 that records every connection and request it receives."""

    port: int
    connections: int = 0
    requests: list[dict[str, Any]] = field(default_factory=list)
    reply_extra: str = ""
    delay_s: float = 0.0

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def grant(self) -> str:
        """The net grant for it: plain http must be granted by name."""
        return f"http://{self.host}"


@pytest.fixture
def http_server() -> Iterator[LoopbackServer]:
    state = LoopbackServer(port=0)
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def _reply(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode() if length else ""
            record = {
                "method": self.command,
                "path": self.path,
                "headers": dict(self.headers.items()),
                "body": body,
            }
            with lock:
                state.requests.append(record)
            time.sleep(state.delay_s)
            payload = json.dumps({"seen": record, "extra": state.reply_extra}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = _reply

        def log_message(self, format: str, *args: Any) -> None:
            pass

    class CountingServer(ThreadingHTTPServer):
        daemon_threads = True

        def verify_request(self, request: Any, client_address: Any) -> bool:
            with lock:
                state.connections += 1
            return True

    server = CountingServer(("127.0.0.1", 0), Handler)
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, name="loopback-http", daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
