"""The dashboard's JSON API, SSE stream, /metrics and /docs against a real `loom web`
(uvicorn on 127.0.0.1) and a real worker process, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

import loom
from tests.e2e.conftest import ROOT
from tests.web.app import Approval
from tests.web.conftest import WebServer, start_worker

pytestmark = pytest.mark.timeout(120)

SCRIPT = "<script>alert(1)</script>"
STATIC = ROOT / "loom" / "web" / "static"


async def wait_for(client: httpx.AsyncClient, path: str, check: Callable[[Any], bool]) -> Any:
    for _ in range(400):
        response = await client.get(path)
        if response.status_code == 200 and check(response.json()):
            return response.json()
        await asyncio.sleep(0.05)
    raise AssertionError(f"{path} never satisfied the check: {response.text}")


def waiting(body: Any) -> bool:
    return body["status"] == "RUNNING" and body["waiting_for_signals"] == ["approve"]


@pytest.fixture
async def dashboard(
    any_db: Path | str, tmp_path: Path, spawn_worker: Any, serve_web: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, WebServer, Path | str]]:
    await Approval.start({"name": SCRIPT}, workflow_id="wf-1", owner="ann")
    start_worker(spawn_worker, any_db, tmp_path)
    server = serve_web(any_db)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        yield client, server, any_db


async def test_list_detail_events_progress_and_404(dashboard: Any) -> None:
    client, _, _ = dashboard
    detail = await wait_for(client, "/api/workflows/wf-1", waiting)
    assert detail["input"] == {"name": SCRIPT}
    assert detail["state"]["greeting"] == f"hello {SCRIPT}"
    assert detail["activities"][0]["name"] == "greet"
    assert detail["activities"][0]["status"] == "completed"

    listed = (await client.get("/api/workflows", params={"owner": "ann"})).json()["workflows"]
    (row,) = listed
    for key in (
        "workflow_id",
        "workflow_name",
        "status",
        "owner",
        "agent",
        "current_step",
        "created_at",
        "updated_at",
    ):
        assert key in row
    assert (row["workflow_name"], row["agent"], row["current_step"]) == (
        "Approval",
        "Robin",
        "approve",
    )
    assert (await client.get("/api/workflows", params={"status": "COMPLETED"})).json() == {
        "workflows": []
    }
    assert (await client.get("/api/workflows", params={"q": "wf-"})).json()["workflows"][0][
        "workflow_id"
    ] == "wf-1"
    bad = await client.get("/api/workflows", params={"status": "SLEEPING"})
    assert bad.status_code == 422 and "SLEEPING" in bad.json()["error"]

    events = (await client.get("/api/workflows/wf-1/events")).json()["events"]
    assert [e["kind"] for e in events][:2] == ["WORKFLOW_STARTED", "STEP_STARTED"]
    assert events[-1]["kind"] == "SIGNAL_WAIT_STARTED"
    logs = (await client.get("/api/workflows/wf-1/logs")).json()["logs"]
    assert logs[0]["message"] == f"greeted {SCRIPT}"

    progress = (await client.get("/api/progress/ann")).json()
    assert progress == await loom.get_progress("ann")
    assert progress["workflows"][0]["message"] == "Robin is waiting for your approval"

    for path in ("/api/workflows/nope", "/api/workflows/nope/events"):
        missing = await client.get(path)
        assert missing.status_code == 404
        assert missing.headers["content-type"] == "application/json"
        assert missing.json()["error"] == "no workflow with id 'nope'"
    signal_missing = await client.post("/api/workflows/nope/signals/approve", json={})
    assert signal_missing.status_code == 404

    activities = (await client.get("/api/activities")).json()
    assert activities["usage"]["greet"]["calls"] == 1
    assert activities["usage"]["greet"]["failures"] == 0

    page = await client.get("/workflows/wf-1")
    assert page.status_code == 200
    assert SCRIPT not in page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text


async def test_bad_bodies_change_nothing_and_a_json_signal_moves_it(dashboard: Any) -> None:
    client, _, _ = dashboard
    await wait_for(client, "/api/workflows/wf-1", waiting)
    before = len((await client.get("/api/workflows/wf-1/events")).json()["events"])

    form = await client.post("/api/workflows/wf-1/signals/approve", data={"ok": "yes"})
    assert form.status_code == 415
    cross_site = await client.post(
        "/api/workflows/wf-1/signals/approve",
        content=b"ok=yes",
        headers={"content-type": "text/plain", "origin": "http://evil.example"},
    )
    assert cross_site.status_code == 415
    scripted = await client.post(
        "/api/workflows/wf-1/signals/approve", json={}, headers={"origin": "http://evil.example"}
    )
    assert scripted.status_code == 403
    rebound = await client.get("/api/workflows", headers={"host": "evil.example"})
    assert rebound.status_code == 403  # DNS rebinding: no token, so loopback names only
    broken = await client.post(
        "/api/workflows/wf-1/signals/approve",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert broken.status_code == 400 and "not valid JSON" in broken.json()["error"]
    bulk = await client.post("/api/workflows/cancel", json={"ids": "wf-1"})
    assert bulk.status_code == 422
    assert (await client.get("/api/workflows/wf-1/signals/approve")).status_code == 405
    after = (await client.get("/api/workflows/wf-1/events")).json()["events"]
    assert len(after) == before

    sent = await client.post("/api/workflows/wf-1/signals/approve", json={"by": "<b>bo</b>"})
    assert sent.json() == {"workflow_id": "wf-1", "signal": "approve", "sent": True}
    done = await wait_for(client, "/api/workflows/wf-1", lambda b: b["status"] == "COMPLETED")
    assert done["state"]["decision"] == {"by": "<b>bo</b>"}
    late = await client.post("/api/workflows/wf-1/signals/approve", json={})
    assert late.status_code == 409


async def test_cancel_one_and_in_bulk(dashboard: Any) -> None:
    client, _, _ = dashboard
    for i in (2, 3):
        await Approval.start({"name": f"n{i}"}, workflow_id=f"wf-{i}", owner="bob")
    for i in (1, 2, 3):
        await wait_for(client, f"/api/workflows/wf-{i}", waiting)
    one = await client.post("/api/workflows/wf-1/cancel", json={"reason": "not needed"})
    assert one.json() == {"workflow_id": "wf-1", "cancel_requested": True}
    bulk = await client.post(
        "/api/workflows/cancel", json={"workflow_ids": ["wf-2", "wf-3", "nope"]}
    )
    results = bulk.json()["results"]
    assert results["wf-2"] == results["wf-3"] == {"cancelled": True}
    assert results["nope"] == {"cancelled": False, "error": "not found"}
    for i in (1, 2, 3):
        await wait_for(client, f"/api/workflows/wf-{i}", lambda b: b["status"] == "CANCELED")
    again = await client.post("/api/workflows/wf-1/cancel", json={})
    assert again.status_code == 409


async def test_suspend_signal_resume_and_fork(dashboard: Any) -> None:
    """Suspended, a signal is kept and nothing runs; resumed, it completes; a fork of the
    finished workflow replays its copied history to the same end."""
    client, _, _ = dashboard
    await wait_for(client, "/api/workflows/wf-1", waiting)
    suspended = await client.post("/api/workflows/wf-1/suspend", json={"reason": "audit"})
    assert suspended.json() == {"workflow_id": "wf-1", "suspended": True, "status": "SUSPENDED"}
    again = await client.post("/api/workflows/wf-1/suspend", json={})
    assert again.json()["suspended"] is False
    sent = await client.post("/api/workflows/wf-1/signals/approve", json={"ok": True})
    assert sent.status_code == 200
    events = (await client.get("/api/workflows/wf-1/events")).json()["events"]
    assert [e["kind"] for e in events[-2:]] == ["WORKFLOW_SUSPENDED", "SIGNAL_RECEIVED"]
    detail = (await client.get("/api/workflows/wf-1")).json()
    assert detail["status"] == "SUSPENDED" and "decision" not in detail["state"]
    assert detail["error"]["message"] == "suspended by an operator: audit"
    page = await client.get("/workflows/wf-1")
    assert 'id="resume-form"' in page.text and "suspended by an operator: audit" in page.text
    resumed = await client.post("/api/workflows/wf-1/resume", json={})
    assert resumed.json() == {"workflow_id": "wf-1", "resumed": True}
    done = await wait_for(client, "/api/workflows/wf-1", lambda b: b["status"] == "COMPLETED")
    assert done["state"]["decision"] == {"ok": True}
    not_suspended = await client.post("/api/workflows/wf-1/resume", json={})
    assert not_suspended.status_code == 409  # finished: nothing can resume it
    closed = await client.post("/api/workflows/wf-1/suspend", json={})
    assert closed.status_code == 409 and "COMPLETED" in closed.json()["error"]
    assert (await client.post("/api/workflows/nope/resume", json={})).status_code == 404
    bad = await client.post("/api/workflows/wf-1/fork", json={"at": 999})
    assert bad.status_code == 422 and "fork at sequence 999" in bad.json()["error"]
    forked = await client.post("/api/workflows/wf-1/fork", json={"workflow_id": "wf-1-copy"})
    assert forked.json() == {"workflow_id": "wf-1-copy", "forked_from": "wf-1"}
    copy = await wait_for(client, "/api/workflows/wf-1-copy", lambda b: b["status"] == "COMPLETED")
    assert copy["state"] == done["state"]


async def sse_events(response: httpx.Response) -> AsyncIterator[tuple[str, str]]:
    event, data = "", []
    async for line in response.aiter_lines():
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())
        elif line == "" and data:
            yield event, "\n".join(data)
            event, data = "", []


async def test_progress_stream_sends_on_connect_and_on_change(dashboard: Any) -> None:
    client, _, _ = dashboard
    await wait_for(client, "/api/workflows/wf-1", waiting)
    async with client.stream("GET", "/api/progress/stream", params={"owner": "ann"}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        stream = sse_events(response)
        kind, data = await asyncio.wait_for(anext(stream), 10)
        assert kind == "progress"
        first = json.loads(data)
        assert [w["workflow_id"] for w in first] == ["wf-1"]
        assert first == (await loom.get_progress("ann"))["workflows"]
        await client.post("/api/workflows/wf-1/signals/approve", json={"ok": True})
        kind, data = await asyncio.wait_for(anext(stream), 10)
        assert kind == "progress"
        assert json.loads(data) != first  # wrapping up, then done: it left the open list
        await stream.aclose()


async def test_metrics_openapi_and_docs_from_local_assets(dashboard: Any) -> None:
    client, server, _ = dashboard
    await wait_for(client, "/api/workflows/wf-1", waiting)
    metrics = await client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    assert 'loom_workflows{status="RUNNING"} 1' in metrics.text
    assert "# TYPE loom_task_backlog gauge" in metrics.text
    assert "wf-1" not in metrics.text
    # The contract's counters, parsed as Prometheus text.
    samples = {
        sample.name: sample.value
        for family in text_string_to_metric_families(metrics.text)
        for sample in family.samples
    }
    assert samples["loom_workflow_started_total"] >= 1
    assert samples["loom_workflow_failed_total"] == 0

    spec = (await client.get("/openapi.json")).json()
    for path in (
        "/api/workflows",
        "/api/workflows/{workflow_id}",
        "/api/workflows/{workflow_id}/events",
        "/api/workflows/{workflow_id}/signals/{name}",
        "/api/workflows/{workflow_id}/cancel",
        "/api/workflows/{workflow_id}/suspend",
        "/api/workflows/{workflow_id}/resume",
        "/api/workflows/{workflow_id}/fork",
        "/api/activities",
        "/api/stats",
        "/api/progress/{owner}",
        "/api/progress/stream",
        "/metrics",
    ):
        assert path in spec["paths"], path

    sums = dict(
        reversed(line.split(maxsplit=1))
        for line in (STATIC / "SHA256SUMS").read_text().splitlines()
    )
    for page in (
        "/docs",
        "/",
        "/workflows/wf-1",
        "/definitions",
        "/activities",
        "/queue",
        "/stats",
    ):
        response = await client.get(page)
        assert response.status_code == 200, page
        html = response.text
        assert "http://" not in html.replace(server.url, "") and "https://" not in html, page
        for ref in re.findall(r'(?:src|href)="(/static/[^"]+)"', html):
            asset = await client.get(ref)
            assert asset.status_code == 200, ref
            name = ref.removeprefix("/static/")
            if name in sums:
                assert hashlib.sha256(asset.content).hexdigest() == sums[name], ref
    docs = (await client.get("/docs")).text
    assert "/static/swagger_ui/swagger-ui-bundle.js" in docs
    assert (await client.get("/redoc")).status_code == 404
    headers = (await client.get("/")).headers
    assert "default-src 'self'" in headers["content-security-policy"]


def test_vendored_assets_match_their_sums() -> None:
    listed = set()
    for line in (STATIC / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        listed.add(name)
        assert hashlib.sha256((STATIC / name).read_bytes()).hexdigest() == digest, name
    on_disk = {str(p.relative_to(STATIC)) for p in STATIC.rglob("*") if p.is_file()}
    assert on_disk - {"SHA256SUMS"} == listed
    for folder in ("htmx", "htmx_sse", "mermaid", "swagger_ui"):
        assert (STATIC / folder / "LICENSE").is_file(), folder


async def test_token_guards_every_request(db_path: Path, serve_web: Any) -> None:
    await Approval.start({"name": "x"}, workflow_id="wf-t")
    server = serve_web(db_path, env={"LOOM_WEB_TOKEN": "s3cret-token"})
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        for path in (
            "/",
            "/api/workflows",
            "/metrics",
            "/openapi.json",
            "/docs",
            "/static/htmx/htmx.min.js",
        ):
            assert (await client.get(path)).status_code == 401, path
        wrong = await client.get("/api/workflows", headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert (await client.get("/?token=nope")).status_code == 401
        bearer = {"authorization": "Bearer s3cret-token"}
        assert (await client.get("/api/workflows", headers=bearer)).status_code == 200
        unsigned = await client.post("/api/workflows/wf-t/cancel", json={})
        assert unsigned.status_code == 401

        login = await client.get("/?token=s3cret-token&status=RUNNING")
        assert login.status_code == 303
        assert login.headers["location"] == "/?status=RUNNING"
        cookie = login.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert (await client.get("/")).status_code == 200  # the client keeps the cookie
        form = await client.post("/api/workflows/wf-t/cancel", data={"reason": "x"})
        assert form.status_code == 415


async def test_ctrl_c_stops_it_with_an_sse_stream_open(db_path: Path, serve_web: Any) -> None:
    await Approval.start({"name": "x"}, workflow_id="wf-s", owner="ann")
    server = serve_web(db_path)
    stream = {"method": "GET", "url": "/api/progress/stream", "params": {"owner": "ann"}}
    async with (
        httpx.AsyncClient(base_url=server.url, timeout=10) as client,
        client.stream(**stream) as resp,
    ):
        await asyncio.wait_for(anext(sse_events(resp)), 10)
        code = await asyncio.to_thread(server.stop, 10)
    assert code == 0, server.log.read_text()


async def test_make_demo_serves_the_dashboard(db_path: Path, tmp_path: Path) -> None:
    from examples.demo import start_dashboard, stop_worker

    web, url = await asyncio.to_thread(start_dashboard, db_path, 0, tmp_path)
    try:
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            assert (await client.get("/api/workflows")).json() == {"workflows": []}
            definitions = (await client.get("/api/definitions")).json()["definitions"]
            assert [d["name"] for d in definitions] == ["ResearchAgent"]
    finally:
        await asyncio.to_thread(stop_worker, web)
    assert web.returncode == 0


def test_a_public_host_needs_a_token(db_path: Path) -> None:
    loom_web = [sys.executable, "-m", "loom", "web", "--db", str(db_path), "--host", "0.0.0.0"]
    db_path.touch()
    refused = subprocess.run(loom_web, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert refused.returncode == 2
    assert "refusing to serve on '0.0.0.0' without a token" in refused.stderr


async def test_registered_definitions_and_their_runs_show_their_steps(
    any_db: Path | str, serve_web: Any
) -> None:
    import loom.wdl
    from loom.client import get_store

    store = get_store(any_db)
    document = {
        "name": "stored-review",
        "version": "2.0.0",
        "steps": [
            {"id": "ask", "type": "wait", "event": "<b>go</b>", "output": "answer"},
            {"id": "rest", "type": "sleep", "duration": 5},
        ],
    }
    compiled, _ = await loom.wdl.register(store, document)
    await compiled.start({}, workflow_id="wf-stored")
    server = serve_web(any_db)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        definitions = (await client.get("/api/definitions")).json()["definitions"]
        stored = next(d for d in definitions if d["name"] == "stored-review")
        assert stored["version"] == "2.0.0"
        assert [s["name"] for s in stored["steps"]] == ["ask", "rest"]
        page = (await client.get("/definitions")).text
        assert "stored-review" in page and "<b>go</b>" not in page
        run = (await client.get("/workflows/wf-stored")).text
        assert "rest" in run  # its steps from the registered version, before any ran


async def test_circuit_breakers_on_the_api_the_page_and_metrics(dashboard: Any) -> None:
    from tests.loom.test_breaker import execute

    client, _, db = dashboard
    execute(
        db,
        "INSERT INTO circuit_breakers (activity_name, state, failure_times, opened_at, "
        "times_opened, failures, window_ms, reset_after_ms, updated_at) "
        "VALUES ('<b>flaky</b>', 'open', '[]', 1000, 2, 5, 60000, 30000, 1000)",
    )
    [breaker] = (await client.get("/api/activities")).json()["circuit_breakers"]
    assert breaker["activity_name"] == "<b>flaky</b>"
    assert (breaker["state"], breaker["times_opened"], breaker["half_open_at"]) == (
        "open",
        2,
        31000,
    )
    stats = (await client.get("/api/stats")).json()
    assert [b["state"] for b in stats["circuit_breakers"]] == ["open"]
    metrics = (await client.get("/metrics")).text
    assert 'loom_circuit_breaker_state{activity="<b>flaky</b>",state="open"} 1' in metrics
    assert 'loom_circuit_breaker_state{activity="<b>flaky</b>",state="closed"} 0' in metrics
    assert 'loom_circuit_breaker_opened_total{activity="<b>flaky</b>"} 2' in metrics
    page = (await client.get("/activities")).text
    assert "&lt;b&gt;flaky&lt;/b&gt;" in page and "<b>flaky</b>" not in page


async def test_actors_are_listed_with_a_type_filter(dashboard: Any) -> None:
    client, _, _ = dashboard
    await loom.send("Cart", "alice", "add", "book")  # created by name; no worker needed
    await loom.send("Ledger", "bob", "add", 1)
    listed = (await client.get("/api/actors")).json()["actors"]
    assert [(a["actor_type"], a["key"]) for a in listed] == [("Cart", "alice"), ("Ledger", "bob")]
    carts = (await client.get("/api/actors", params={"type": "Cart"})).json()["actors"]
    assert [a["workflow_id"] for a in carts] == ["actor:Cart:alice"]
    page = await client.get("/api/workflows", params={"name": "actor:Cart"})
    assert [w["workflow_id"] for w in page.json()["workflows"]] == ["actor:Cart:alice"]
