"""Local stand-ins for the outside world: an LLM endpoint and a page server.

Both bind 127.0.0.1 and answer deterministically, so the demo and the tests need no network.
The LLM stub speaks two wire formats: OpenAI's `/v1/chat/completions` (what `llm-chat` and
`openai-chat` send, incl. `tools`/`tool_calls`) and Anthropic's `/v1/messages` (what
`anthropic-chat` sends, incl. `tool_use`/`tool_result` blocks), so pointing those activities at
a real provider works the same way. Both formats are read into one neutral conversation and
answered by one policy (`StubModel`): a scripted list of turns when the tests give one, else a
small research agent that fetches every URL in the prompt with the offered tools, counts its
words, and answers (as JSON when a schema is asked for).
Run standalone: `python examples/llm_stub.py [--llm-port 8765] [--page-port 8766]`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = [
    "DEFAULT_LLM_PORT",
    "DEFAULT_PAGE_PORT",
    "PAGES",
    "StubModel",
    "StubServers",
    "summarize",
]

DEFAULT_LLM_PORT = 8765
DEFAULT_PAGE_PORT = 8766
STUB_MODEL = "loom-stub-1"
STUB_CLAUDE = "loom-stub-claude"
URL_PATTERN = re.compile(r"https?://[^\s\"'<>]+[^\s\"'<>.,;:)?!]")
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


def _words(value: object) -> int:
    return len(str(value or "").split())


class StubModel:
    """The stub's "model": reads a neutral conversation, returns `{content, tool_calls}`.

    A neutral message is `{role, content, tool_calls?, tool_call_id?}` (roles system, user,
    assistant, tool), the shape both wire formats are read into. With `script` (a list of
    turns `{content?, tool_calls?: [{name, arguments}]}`), the reply to a conversation holding
    N assistant turns is `script[N]`, so a repeated request (a retried or re-run activity) gets
    the same answer. Without one, see the module docstring.
    """

    HOLD_TIMEOUT_S = 120.0

    def __init__(self, script: list[dict[str, Any]] | None = None) -> None:
        self.script = script
        self.turns: list[int] = []  # the turn number of each request answered or held
        self.hold_turn: int | None = None
        self.released = threading.Event()

    def hold(self, turn: int) -> None:
        """Hold the answer to turn `turn` until `release()`: the tests kill a worker while
        it waits on a model call, with every earlier call already answered."""
        self.hold_turn = turn
        self.released.clear()

    def release(self) -> None:
        self.released.set()

    def reply(self, request: dict[str, Any]) -> dict[str, Any]:
        messages: list[dict[str, Any]] = request["messages"]
        turn = sum(1 for m in messages if m.get("role") == "assistant")
        self.turns.append(turn)
        if turn == self.hold_turn:
            self.released.wait(self.HOLD_TIMEOUT_S)
        if self.script is not None:
            step = self.script[min(turn, len(self.script) - 1)]
            calls = [
                {"id": f"call_{turn}_{i}", "name": c["name"], "arguments": c["arguments"]}
                for i, c in enumerate(step.get("tool_calls", []))
            ]
            return {"content": step.get("content", ""), "tool_calls": calls}
        if not request["tools"]:
            last_user = next((m for m in reversed(messages) if m.get("role") == "user"), {})
            return {"content": summarize(str(last_user.get("content", ""))), "tool_calls": []}
        return self._research(messages, request["tools"], turn, request["schema"])

    def _research(
        self,
        messages: list[dict[str, Any]],
        tools: list[str],
        turn: int,
        schema: dict[str, Any] | None,
    ) -> dict[str, Any]:
        """Fetch each URL of the first user message, then count each page's words, then answer."""
        prompt = next((str(m.get("content")) for m in messages if m.get("role") == "user"), "")
        results = [_loads(m.get("content")) for m in messages if m.get("role") == "tool"]
        pages = [r for r in results if isinstance(r, dict) and "title" in r and "text" in r]
        counts = [r["words"] for r in results if isinstance(r, dict) and "words" in r]
        fetch = next((t for t in tools if "fetch" in t), None)
        count = next((t for t in tools if "count" in t), None)
        if fetch and not pages:
            urls = list(dict.fromkeys(URL_PATTERN.findall(prompt)))
            return self._calls(turn, fetch, [{"url": u, "max_chars": 4000} for u in urls])
        if count and pages and not counts:
            return self._calls(turn, count, [{"text": p["text"]} for p in pages])
        sources = [
            {
                "url": page["url"],
                "title": page["title"],
                "words": counts[i] if i < len(counts) else _words(page["text"]),
                "summary": summarize(page["text"]),
            }
            for i, page in enumerate(pages)
        ]
        if schema is not None:
            return {"content": json.dumps(_fill(schema, sources)), "tool_calls": []}
        text = " ".join(f"{s['title']}: {s['summary']}" for s in sources)
        return {"content": text or "(nothing found)", "tool_calls": []}

    @staticmethod
    def _calls(turn: int, tool: str, arguments: list[dict[str, Any]]) -> dict[str, Any]:
        calls = [
            {"id": f"call_{turn}_{i}", "name": tool, "arguments": json.dumps(a)}
            for i, a in enumerate(arguments)
        ]
        return {"content": "", "tool_calls": calls}


def _fill(schema: dict[str, Any], sources: list[dict[str, Any]]) -> dict[str, Any]:
    """A JSON answer for an object schema, from what the tools returned: an array property
    gets the sources, a number the words counted, a string the summaries."""
    answer: dict[str, Any] = {}
    for name, field in (schema.get("properties") or {"sources": {"type": "array"}}).items():
        kind = field.get("type", "array" if "items" in field else "string")
        if kind == "array":
            answer[name] = sources
        elif kind in ("integer", "number"):
            answer[name] = sum(s["words"] for s in sources)
        elif kind == "boolean":
            answer[name] = True
        elif kind == "object":
            answer[name] = {}
        else:
            answer[name] = " ".join(s["summary"] for s in sources)
    return answer


def _schema_in(system: str) -> dict[str, Any] | None:
    """The JSON Schema anthropic-chat wrote into the system prompt, or None."""
    marker = "matching this JSON Schema: "
    if marker not in system:
        return {} if "Answer with one JSON value" in system else None
    found = _loads(system.split(marker, 1)[1].rstrip().removesuffix("."))
    return found if isinstance(found, dict) else {}


def _loads(text: object) -> object:
    try:
        return json.loads(str(text))
    except ValueError:
        return None


def _usage(messages: list[dict[str, Any]], reply: dict[str, Any]) -> tuple[int, int]:
    prompt = sum(_words(m.get("content")) for m in messages)
    completion = _words(reply["content"]) + sum(_words(c["arguments"]) for c in reply["tool_calls"])
    return prompt, completion


def _completion(request: dict[str, Any], model: StubModel) -> dict[str, Any]:
    """An OpenAI Chat Completions answer."""
    messages = [
        {
            **m,
            "tool_calls": [
                {
                    "id": c["id"],
                    "name": c["function"]["name"],
                    "arguments": c["function"]["arguments"],
                }
                for c in m.get("tool_calls") or []
            ],
        }
        for m in request.get("messages") or []
    ]
    tools = [t["function"]["name"] for t in request.get("tools") or []]
    response_format = request.get("response_format") or None
    schema = None
    if response_format is not None:
        schema = (response_format.get("json_schema") or {}).get("schema") or {}
    reply = model.reply({"messages": messages, "tools": tools, "schema": schema})
    prompt_tokens, completion_tokens = _usage(messages, reply)
    message: dict[str, Any] = {"role": "assistant", "content": reply["content"] or None}
    if reply["tool_calls"]:
        message["tool_calls"] = [
            {
                "id": c["id"],
                "type": "function",
                "function": {"name": c["name"], "arguments": c["arguments"]},
            }
            for c in reply["tool_calls"]
        ]
    elif message["content"] is None:
        message["content"] = ""
    return {
        "id": f"chatcmpl-stub-{prompt_tokens}-{completion_tokens}",
        "object": "chat.completion",
        "created": 0,
        "model": request.get("model") or STUB_MODEL,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": "tool_calls" if reply["tool_calls"] else "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def _neutral_anthropic(request: dict[str, Any]) -> list[dict[str, Any]]:
    """Messages API turns as neutral messages (tool_result blocks become tool messages)."""
    messages: list[dict[str, Any]] = []
    if request.get("system"):
        messages.append({"role": "system", "content": request["system"]})
    for turn in request.get("messages") or []:
        content = turn.get("content")
        if isinstance(content, str):
            messages.append({"role": turn["role"], "content": content})
            continue
        text = " ".join(b.get("text", "") for b in content if b.get("type") == "text")
        calls = [
            {"id": b["id"], "name": b["name"], "arguments": json.dumps(b["input"])}
            for b in content
            if b.get("type") == "tool_use"
        ]
        results = [b for b in content if b.get("type") == "tool_result"]
        for block in results:
            messages.append(
                {"role": "tool", "tool_call_id": block["tool_use_id"], "content": block["content"]}
            )
        if not results:
            messages.append({"role": turn["role"], "content": text, "tool_calls": calls})
    return messages


def _message(request: dict[str, Any], model: StubModel) -> dict[str, Any]:
    """An Anthropic Messages API answer."""
    messages = _neutral_anthropic(request)
    tools = [t["name"] for t in request.get("tools") or []]
    schema = _schema_in(str(request.get("system", "")))
    reply = model.reply({"messages": messages, "tools": tools, "schema": schema})
    prompt_tokens, completion_tokens = _usage(messages, reply)
    blocks: list[dict[str, Any]] = []
    if reply["content"]:
        blocks.append({"type": "text", "text": reply["content"]})
    for call in reply["tool_calls"]:
        arguments = _loads(call["arguments"])
        blocks.append(
            {
                "type": "tool_use",
                "id": call["id"].replace("call_", "toolu_"),
                "name": call["name"],
                "input": arguments if isinstance(arguments, dict) else {},
            }
        )
    return {
        "id": f"msg-stub-{prompt_tokens}-{completion_tokens}",
        "type": "message",
        "role": "assistant",
        "model": request.get("model") or STUB_CLAUDE,
        "content": blocks,
        "stop_reason": "tool_use" if reply["tool_calls"] else "end_turn",
        "usage": {"input_tokens": prompt_tokens, "output_tokens": completion_tokens},
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
        route = self.path.split("?", 1)[0].rstrip("/")  # Azure adds ?api-version=…
        if route not in ("/v1/chat/completions", "/v1/messages"):
            return self._json(404, {"error": {"message": f"no route {self.path}"}})
        expected = self.stubs.api_key
        given = (
            self.headers.get("x-api-key")
            if route == "/v1/messages"
            else (self.headers.get("Authorization") or "").removeprefix("Bearer ")
            or self.headers.get("api-key")
        )
        if expected and given != expected:
            self.stubs.record("llm", "unauthorized")
            return self._json(401, {"error": {"message": "invalid API key", "type": "auth"}})
        try:
            length = int(self.headers.get("Content-Length") or 0)
            request = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            return self._json(400, {"error": {"message": "body is not JSON"}})
        self.stubs.record("llm", "ok")
        self.stubs.received.append(request)
        if route == "/v1/messages":
            if not isinstance(request.get("max_tokens"), int):
                return self._json(400, {"error": {"message": "max_tokens: field required"}})
            return self._json(200, _message(request, self.stubs.model))
        self._json(200, _completion(request, self.stubs.model))

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
    real ones. `api_key`, when set, is the only key accepted (`Authorization: Bearer`, Azure's
    `api-key`, or Anthropic's `x-api-key`), which proves the worker substituted the secret.
    `requests` counts what each server answered; `received` keeps each LLM request body.
    `script` makes the model a scripted one (see `StubModel`).
    """

    def __init__(
        self,
        *,
        llm_port: int = DEFAULT_LLM_PORT,
        page_port: int = DEFAULT_PAGE_PORT,
        api_key: str | None = None,
        script: list[dict[str, Any]] | None = None,
    ) -> None:
        self.api_key = api_key
        self.model = StubModel(script)
        self.received: list[dict[str, Any]] = []
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

    @property
    def messages_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.llm_port}/v1/messages"

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
