"""`traceparent` on sandboxed HTTP requests, in the worker's threads and in sandbox
processes, and the egress journal of a call (no query, no body, no secret)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from opentelemetry import trace

from tests.wasm_activities.conftest import LoopbackServer
from wasm_activities import FsGrant, Grants, PreparedModule, SandboxRuntime

SECRET = "sk-sandbox-9e1f"


def _payload(server: LoopbackServer) -> dict[str, str]:
    request = {
        "method": "POST",
        "url": f"http://{server.host}/items/7?key={{{{secret:API_KEY}}}}",
        "headers": {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"},  # replaced
        "body": '{"secret": "{{secret:API_KEY}}"}',
    }
    return {"request": json.dumps(request), "needle_xor": ""}


def _traceparent(server: LoopbackServer) -> tuple[int, int]:
    (seen,) = server.requests
    version, trace_id, span_id, flags = seen["headers"]["traceparent"].split("-")
    assert version == "00" and int(flags, 16) & 1, "W3C version 00, sampled"
    return int(trace_id, 16), int(span_id, 16)


async def test_a_threaded_call_sends_its_http_spans_context(
    spans: Any,
    runtime: SandboxRuntime,
    prepared: Callable[[str], PreparedModule],
    http_server: LoopbackServer,
) -> None:
    grants = Grants(net=[http_server.grant], secrets=["API_KEY"])
    with trace.get_tracer("test").start_as_current_span("call") as parent:
        result = await runtime.run(
            prepared("http_client.c"),
            _payload(http_server),
            grants=grants,
            secrets={"API_KEY": SECRET},
        )
    (client,) = [s for s in spans.get_finished_spans() if s.kind is trace.SpanKind.CLIENT]
    assert client.name == "POST" and client.parent.span_id == parent.get_span_context().span_id
    assert _traceparent(http_server) == (client.context.trace_id, client.context.span_id)
    assert client.attributes["http.response.status_code"] == 200
    assert SECRET not in json.dumps(dict(client.attributes or {}))
    (entry,) = result.usage.egress
    assert entry["path"] == "/items/7" and entry["status"] == 200 and entry["method"] == "POST"
    assert SECRET not in json.dumps(entry) and "key" not in json.dumps(entry)


async def test_a_sandbox_process_call_sends_the_callers_context(
    spans: Any,
    runtime: SandboxRuntime,
    prepared: Callable[[str], PreparedModule],
    http_server: LoopbackServer,
    tmp_path: Path,
) -> None:
    """An fs grant runs the call in a sandbox process, which has no SDK: the request still
    carries the caller's span as its parent."""
    grants = Grants(
        net=[http_server.grant],
        secrets=["API_KEY"],
        fs=[FsGrant(host=str(tmp_path), guest="/data")],
    )
    with trace.get_tracer("test").start_as_current_span("call") as parent:
        result = await runtime.run(
            prepared("http_client.c"),
            _payload(http_server),
            grants=grants,
            secrets={"API_KEY": SECRET},
        )
    context = parent.get_span_context()
    assert _traceparent(http_server) == (context.trace_id, context.span_id)
    (entry,) = result.usage.egress
    assert entry["path"] == "/items/7" and entry["bytes_in"] > 0


async def test_without_an_sdk_no_traceparent_is_invented(
    runtime: SandboxRuntime,
    prepared: Callable[[str], PreparedModule],
    http_server: LoopbackServer,
) -> None:
    payload = _payload(http_server)
    request = json.loads(payload["request"])
    request["headers"] = {}
    payload["request"] = json.dumps(request)
    grants = Grants(net=[http_server.grant], secrets=["API_KEY"])
    await runtime.run(
        prepared("http_client.c"), payload, grants=grants, secrets={"API_KEY": SECRET}
    )
    (seen,) = http_server.requests
    assert "traceparent" not in {k.lower() for k in seen["headers"]}
