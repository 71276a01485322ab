"""Tracing: the span tree of a workflow with native and WebAssembly activities, one trace from
the caller's span through retries and a worker restart, `traceparent` on sandboxed HTTP, and
the egress journal kept with the activity's completion (no secret, query value or body)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import loom
import loom.telemetry
from activity_registry import Registry
from loom.client import get_store
from loom.history import EventKind
from loom.web.app import create_app
from tests.activity_registry.activity_files import write_activity
from tests.conftest import _reset_tracing, is_postgres
from tests.wasm_activities.conftest import LoopbackServer, build_test_module
from tests.wasm_activities.conftest import http_server as http_server  # the fixture

SECRET = "sk-live-3f9a7c1e"
QUERY_VALUE = "q-token-5d2b"  # the value of the query's `token`, a second secret


attempts: dict[str, int] = {}


@loom.activity(retry=3, timeout=10)
async def flaky(key: str) -> str:
    """Fails its first attempt, then succeeds: one retry in the trace."""
    attempts[key] = attempts.get(key, 0) + 1
    if attempts[key] == 1:
        raise ConnectionError("transient")
    return f"ok {key}"


@loom.workflow(name="Traced")
class Traced(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
    @loom.step
    async def run(self, ctx):  # type: ignore[no-untyped-def]
        ctx.state.native = await ctx.activity(flaky, ctx.input["key"])
        await ctx.wait_for_signal("go")
        out = await ctx.activity("http-client@^1", ctx.input["call"])
        ctx.state.code = out["code"]


async def _register_http_client(
    db_path: Path | str, tmp_path: Path, server: LoopbackServer
) -> None:
    manifest = write_activity(
        tmp_path / "activities",
        name="http-client",
        module_bytes=build_test_module("http_client.c").read_bytes(),
        grants=f'net = ["{server.grant}"]\nsecrets = ["API_KEY", "TOKEN"]',
    )
    async with Registry(db_path) as registry:
        await registry.register(manifest, approve_grants=True)


def _call(server: LoopbackServer) -> dict[str, Any]:
    request = {
        "method": "POST",
        "url": f"http://{server.host}/v1/chat?token={{{{secret:TOKEN}}}}&page=2",
        "headers": {"Authorization": "Bearer {{secret:API_KEY}}"},
        "body": '{"token": "{{secret:API_KEY}}", "text": "a body"}',
    }
    return {"request": json.dumps(request), "needle_xor": ""}


def _by_name(finished: tuple[ReadableSpan, ...], prefix: str) -> list[ReadableSpan]:
    return [s for s in finished if s.name.startswith(prefix)]


async def test_one_trace_from_the_caller_through_retries_and_a_worker_restart(
    spans: InMemorySpanExporter,
    db_path: Path | str,
    tmp_path: Path,
    make_worker: Any,
    http_server: LoopbackServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("API_KEY", SECRET)
    monkeypatch.setenv("TOKEN", QUERY_VALUE)
    await _register_http_client(db_path, tmp_path, http_server)
    key = uuid.uuid4().hex  # `flaky` fails the first attempt of each key
    tracer = trace.get_tracer("caller")
    with tracer.start_as_current_span("caller") as caller:
        handle = await Traced.start({"key": key, "call": _call(http_server)})
    trace_id = caller.get_span_context().trace_id

    async with make_worker([Traced], [flaky]):
        await _until_first_activity_completed(handle.workflow_id)
    # A new worker: nothing cached, so its first task replays the history.
    async with make_worker([Traced], [flaky]):
        await handle.signal("go")
        assert (await handle.result(timeout=20))["code"] == 0

    finished = spans.get_finished_spans()
    assert {s.context.trace_id for s in finished} == {trace_id}, "every span is in one trace"
    by_id = {s.context.span_id: s for s in finished}
    (start,) = _by_name(finished, "StartWorkflow:Traced")
    assert start.parent is not None and start.parent.span_id == caller.get_span_context().span_id
    runs = _by_name(finished, "RunWorkflow:Traced")
    assert len(runs) >= 3 and all(r.parent.span_id == start.context.span_id for r in runs)  # type: ignore[union-attr]
    replays = [r.attributes["loom.replay"] for r in runs]
    assert replays[0] is False and True in replays, f"the new worker replays the history: {replays}"
    assert all(r.attributes["loom.workflow.id"] == handle.workflow_id for r in runs)

    native = _by_name(finished, "RunActivity:flaky")
    # Two attempts, two spans: the replay re-ran the workflow code, not the activity.
    assert [s.attributes["loom.activity.attempt"] for s in native] == [1, 2]
    assert native[0].attributes["error.type"] == "ConnectionError"
    assert native[0].status.status_code is trace.StatusCode.ERROR
    assert native[1].status.status_code is trace.StatusCode.UNSET
    assert native[0].parent.span_id == native[1].parent.span_id  # type: ignore[union-attr]
    assert by_id[native[0].parent.span_id].name == "RunWorkflow:Traced"  # type: ignore[union-attr]

    (wasm_activity,) = _by_name(finished, "RunActivity:http-client")
    assert wasm_activity.attributes["loom.activity.version"] == "1.0.0"
    (wasm_call,) = _by_name(finished, "WasmCall:http-client")
    assert wasm_call.parent.span_id == wasm_activity.context.span_id  # type: ignore[union-attr]
    (http_span,) = [s for s in finished if s.kind is trace.SpanKind.CLIENT]
    assert http_span.parent.span_id == wasm_call.context.span_id  # type: ignore[union-attr]
    assert http_span.attributes["http.response.status_code"] == 200
    assert http_span.attributes["url.path"] == "/v1/chat"

    # The loopback server saw the HTTP span's context as W3C traceparent.
    (seen,) = http_server.requests
    version, seen_trace, seen_span, _ = seen["headers"]["traceparent"].split("-")
    assert (version, int(seen_trace, 16), int(seen_span, 16)) == (
        "00",
        trace_id,
        http_span.context.span_id,
    )
    # No span carries an input, an output, the secret or the query value.
    text = json.dumps([dict(s.attributes or {}) for s in finished])
    for forbidden in (SECRET, QUERY_VALUE, "a body", key):
        assert forbidden not in text


async def test_egress_journal_keeps_no_secret_query_value_or_body(
    db_path: Path | str,
    tmp_path: Path,
    make_worker: Any,
    http_server: LoopbackServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("API_KEY", SECRET)
    monkeypatch.setenv("TOKEN", QUERY_VALUE)
    await _register_http_client(db_path, tmp_path, http_server)
    async with make_worker([Traced], [flaky]):
        handle = await Traced.start({"key": uuid.uuid4().hex, "call": _call(http_server)})
        await handle.signal("go")
        assert (await handle.result(timeout=20))["code"] == 0
    (seen,) = http_server.requests
    assert seen["path"] == f"/v1/chat?token={QUERY_VALUE}&page=2"  # the real request had it
    assert "traceparent" not in seen["headers"], "no SDK installed: nothing is propagated"

    events = await get_store().list_events(handle.workflow_id)
    done = [e for e in events if e.kind is EventKind.ACTIVITY_COMPLETED and "usage" in e.payload]
    (entry,) = done[0].payload["usage"]["egress"]
    assert entry["method"] == "POST" and entry["host"] == "127.0.0.1"
    assert entry["port"] == http_server.port and entry["path"] == "/v1/chat"
    assert entry["status"] == 200 and entry["bytes_out"] == len(seen["body"].encode())
    assert entry["bytes_in"] > 0 and entry["duration_ms"] > 0
    # Nowhere in the database: neither the secret, nor the query value, nor the body.
    history = json.dumps([e.payload for e in events])
    assert "{{secret:API_KEY}}" in history  # the workflow's own input keeps the placeholder
    for forbidden in (SECRET, QUERY_VALUE):
        assert forbidden not in history
    assert "a body" not in json.dumps(entry) and "page" not in json.dumps(entry)

    if not is_postgres(db_path):  # every table, every row: the whole database as SQL text
        with contextlib.closing(sqlite3.connect(db_path)) as conn:
            dump = "\n".join(conn.iterdump())
        assert "/v1/chat" in dump and SECRET not in dump and QUERY_VALUE not in dump

    # What an operator sees: `loom inspect --egress`, `loom activity show`, the dashboard.
    inspected = json.loads(
        await _loom("inspect", handle.workflow_id, "--egress", "--json", db=db_path)
    )
    (shown,) = inspected["egress"]
    assert shown["activity"] == "http-client@^1" and shown["version"] == "1.0.0"
    assert {k: shown[k] for k in entry} == entry
    table = await _loom("inspect", handle.workflow_id, "--egress", db=db_path)
    assert f"127.0.0.1:{http_server.port}" in table and "/v1/chat" in table
    show = json.loads(await _loom("activity", "show", "http-client", "--json", db=db_path))
    assert show["egress"]["1.0.0"] == {
        "calls": 1,
        "requests": 1,
        "bytes_out": entry["bytes_out"],
        "bytes_in": entry["bytes_in"],
        "duration_ms": entry["duration_ms"],
        "hosts": [f"127.0.0.1:{http_server.port}"],
    }
    app = create_app(database=str(db_path))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        api = (await client.get(f"/api/workflows/{handle.workflow_id}")).json()
        page = (await client.get(f"/workflows/{handle.workflow_id}")).text
    assert api["egress"] == inspected["egress"]
    assert '<section id="egress">' in page and "/v1/chat" in page and QUERY_VALUE not in page


async def _loom(*args: str, db: Path | str) -> str:
    """`loom ...` as a user runs it (a subprocess: each command has its own event loop)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "loom",
        *args,
        "--db",
        str(db),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "COLUMNS": "200"},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def _until_first_activity_completed(workflow_id: str) -> None:
    """Polls history (a readiness check, bounded), not a sleep standing in for one."""
    deadline = time.monotonic() + 20
    while not any(
        e.kind is EventKind.ACTIVITY_COMPLETED for e in await get_store().list_events(workflow_id)
    ):
        assert time.monotonic() < deadline, "the first activity never completed"
        await asyncio.sleep(0.05)


@loom.workflow(name="TracedChild")
class TracedChild(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
    @loom.step
    async def run(self, ctx):  # type: ignore[no-untyped-def]
        ctx.state.native = await ctx.activity(flaky, ctx.input["key"])


@loom.workflow(name="TracedParent")
class TracedParent(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
    @loom.step
    async def run(self, ctx):  # type: ignore[no-untyped-def]
        ctx.state.child = await ctx.start_workflow(TracedChild, {"key": ctx.input["key"]})


async def test_a_child_workflow_joins_its_parents_trace(
    spans: InMemorySpanExporter, make_worker: Any
) -> None:
    with trace.get_tracer("caller").start_as_current_span("caller") as caller:
        handle = await TracedParent.start({"key": uuid.uuid4().hex})
    async with make_worker([TracedParent, TracedChild], [flaky]):
        await handle.result(timeout=20)
    finished = spans.get_finished_spans()
    assert {s.context.trace_id for s in finished} == {caller.get_span_context().trace_id}
    by_id = {s.context.span_id: s for s in finished}
    child_runs = _by_name(finished, "RunWorkflow:TracedChild")
    assert child_runs and all(
        by_id[r.parent.span_id].name == "RunWorkflow:TracedParent"  # type: ignore[union-attr]
        for r in child_runs
    )
    assert len(_by_name(finished, "RunActivity:flaky")) == 2


async def test_a_workflow_started_without_a_trace_still_has_one(
    spans: InMemorySpanExporter, make_worker: Any
) -> None:
    """No caller span: every task's spans share a trace derived from the workflow id."""
    provider = trace.get_tracer_provider()
    _reset_tracing()  # a starter without an SDK stores no trace context
    handle = await TracedChild.start({"key": uuid.uuid4().hex})
    trace.set_tracer_provider(provider)
    async with make_worker([TracedChild], [flaky]):
        await handle.result(timeout=20)
    finished = spans.get_finished_spans()
    assert len(_by_name(finished, "RunWorkflow:TracedChild")) >= 2
    derived = trace.get_current_span(loom.telemetry.workflow_context(handle.workflow_id))
    assert {s.context.trace_id for s in finished} == {derived.get_span_context().trace_id}
