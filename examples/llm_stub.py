"""Local stand-ins for the outside world: an OpenAI-compatible chat endpoint and a page server.

Both bind 127.0.0.1 and answer deterministically, so the demo and the tests need no network.
The LLM stub speaks the `/v1/chat/completions` wire format that `examples/activities/llm-chat`
sends, so pointing that activity at a real provider (its endpoint and `OPENAI_API_KEY`) works
the same way. Run standalone: `python examples/llm_stub.py [--llm-port 8765] [--page-port 8766]`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["DEFAULT_LLM_PORT", "DEFAULT_PAGE_PORT", "PAGES", "StubServers", "summarize"]

DEFAULT_LLM_PORT = 8765
DEFAULT_PAGE_PORT = 8766
STUB_MODEL = "loom-stub-1"
SUMMARY_SENTENCES = 2

PAGES: dict[str, tuple[str, str]] = {
    "durable-execution": (
        "Durable execution in five minutes",
        "Durable execution records every step a workflow takes in an append-only history. "
        "When a worker crashes, another worker replays the history and the workflow continues "
        "exactly where it stopped, without repeating side effects that already happened. "
        "Timers, signals and child workflows are events in the same history.",
    ),
    "wasm-sandboxing": (
        "Why run tools in a WebAssembly sandbox",
        "A WebAssembly module can only touch what its host hands it: no files, no network and no "
        "environment unless granted. Memory is capped per call and an epoch deadline stops "
        "runaway loops. Compiled modules are cached, so a call costs microseconds, not "
        "milliseconds.",
    ),
    "capability-grants": (
        "Capabilities, grants and secrets",
        "Each activity version declares the hosts it may call, the secrets it may use and the "
        "directories it may read. Secrets appear to the module only as placeholders that the host "
        "fills in for allowed hosts, so a compromised tool cannot exfiltrate an API key. "
        "Widening a grant requires an explicit approval when the new version is registered.",
    ),
}

_PAGE_HTML = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>body {{ font-family: sans-serif; }}</style></head>
<body><nav>Home · Articles</nav>
<h1>{title}</h1>
<script>console.log("not part of the text");</script>
<p>{text}</p>
</body></html>
"""


def summarize(text: str, sentences: int = SUMMARY_SENTENCES) -> str:
    """The stub's deterministic "summary": the first sentences of the text after the last `---`.

    Lines that do not end like a sentence (titles, headings) are left out.
    """
    lines = text.rsplit("---", 1)[-1].strip().splitlines()
    body = " ".join(line.strip() for line in lines if line.rstrip().endswith((".", "!", "?")))
    parts = re.split(r"(?<=[.!?])\s+", body)
    return " ".join(parts[:sentences]).strip() or "(nothing to summarize)"


def _completion(request: dict[str, Any]) -> dict[str, Any]:
    messages = request.get("messages") or []
    last_user = next((m for m in reversed(messages) if m.get("role") == "user"), {})
    content = summarize(str(last_user.get("content", "")))
    prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in messages)
    completion_tokens = len(content.split())
    return {
        "id": f"chatcmpl-stub-{prompt_tokens}-{completion_tokens}",
        "object": "chat.completion",
        "created": 0,
        "model": request.get("model") or STUB_MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


class _Handler(BaseHTTPRequestHandler):
    server_version = "loom-stub/1"
    stubs: StubServers  # set on the per-server subclass

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the demo prints its own
        pass

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, value: object) -> None:
        self._send(status, json.dumps(value).encode(), "application/json")


class _LLMHandler(_Handler):
    def do_POST(self) -> None:
        if self.path.rstrip("/") != "/v1/chat/completions":
            return self._json(404, {"error": {"message": f"no route {self.path}"}})
        expected = self.stubs.api_key
        if expected and self.headers.get("Authorization") != f"Bearer {expected}":
            self.stubs.record("llm", "unauthorized")
            return self._json(401, {"error": {"message": "invalid API key", "type": "auth"}})
        try:
            length = int(self.headers.get("Content-Length") or 0)
            request = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            return self._json(400, {"error": {"message": "body is not JSON"}})
        self.stubs.record("llm", "ok")
        self._json(200, _completion(request))

    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/v1/models":
            return self._json(200, {"object": "list", "data": [{"id": STUB_MODEL}]})
        self._json(404, {"error": {"message": f"no route {self.path}"}})


class _PageHandler(_Handler):
    def do_GET(self) -> None:
        match = re.fullmatch(r"/pages/([a-z0-9-]+)\.html", self.path)
        if not match or match.group(1) not in PAGES:
            self.stubs.record("pages", "missing")
            return self._send(404, b"<html><title>Not found</title></html>", "text/html")
        title, text = PAGES[match.group(1)]
        self.stubs.record("pages", "ok")
        html = _PAGE_HTML.format(title=title, text=text)
        self._send(200, html.encode(), "text/html; charset=utf-8")


class StubServers:
    """The LLM stub and the page server, each on 127.0.0.1 in a daemon thread.

    Use as a context manager. Port 0 picks a free port; `llm_port`/`page_port` then hold the
    real ones. `api_key`, when set, is the only `Authorization: Bearer` value accepted, which
    proves the worker substituted the secret. `requests` counts what each server answered.
    """

    def __init__(
        self,
        *,
        llm_port: int = DEFAULT_LLM_PORT,
        page_port: int = DEFAULT_PAGE_PORT,
        api_key: str | None = None,
    ) -> None:
        self.api_key = api_key
        self.requests: dict[str, int] = {}
        self._lock = threading.Lock()
        self._servers = [
            self._server(_LLMHandler, llm_port),
            self._server(_PageHandler, page_port),
        ]
        self._threads: list[threading.Thread] = []

    def _server(self, handler: type[_Handler], port: int) -> ThreadingHTTPServer:
        bound = type(handler.__name__, (handler,), {"stubs": self})
        server = ThreadingHTTPServer(("127.0.0.1", port), bound)
        server.daemon_threads = True
        return server

    @property
    def llm_port(self) -> int:
        return self._servers[0].server_address[1]

    @property
    def page_port(self) -> int:
        return self._servers[1].server_address[1]

    @property
    def llm_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.llm_port}/v1/chat/completions"

    def page_url(self, slug: str) -> str:
        return f"http://127.0.0.1:{self.page_port}/pages/{slug}.html"

    def record(self, server: str, outcome: str) -> None:
        with self._lock:
            key = f"{server}:{outcome}"
            self.requests[key] = self.requests.get(key, 0) + 1

    def start(self) -> StubServers:
        for server in self._servers:
            thread = threading.Thread(target=server.serve_forever, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        for server in self._servers:
            if self._threads:
                server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads.clear()

    def __enter__(self) -> StubServers:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--llm-port", type=int, default=DEFAULT_LLM_PORT)
    parser.add_argument("--page-port", type=int, default=DEFAULT_PAGE_PORT)
    parser.add_argument("--api-key", default=None, help="accept only this bearer token")
    args = parser.parse_args(argv)
    with StubServers(llm_port=args.llm_port, page_port=args.page_port, api_key=args.api_key) as s:
        print(f"LLM endpoint: {s.llm_endpoint}")
        for slug in PAGES:
            print(f"page:         {s.page_url(slug)}")
        print("Ctrl-C to stop.")
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
