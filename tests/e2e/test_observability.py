"""Worker subprocesses: Prometheus text from `--metrics-port` with the right counts, and
`--log-format json` lines that parse, carry the ids, and stay silent on replay."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from loom.client import get_store
from loom.history import EventKind
from tests.e2e.conftest import ROOT, wait_serving
from tests.e2e.observed_app import Observed

APP = "tests.e2e.observed_app"


async def _metrics_url(log: Path, timeout: float = 90) -> str:
    """The worker announces its metrics endpoint on stderr (a readiness handshake)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        text = await asyncio.to_thread(log.read_text, errors="replace")
        found = re.search(r"metrics on (http://\S+/metrics)", text)
        if found:
            return found.group(1)
        await asyncio.sleep(0.05)
    raise AssertionError(f"no metrics line in {log}")


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = {k: v for k, v in sample.labels.items() if not k.startswith("otel_")}
            out[(sample.name, frozenset(labels.items()))] = sample.value
    return out


async def _until(predicate: Any, what: str, timeout: float = 60) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await predicate():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_worker_serves_prometheus_text_with_the_right_counts(
    db_path: Path, spawn_worker: Any, tmp_path: Path
) -> None:
    spawn_worker(db_path, "--app", APP, "--metrics-port", "0", "--lease-seconds", "1")
    url = await _metrics_url(tmp_path / "worker-0.log")
    handles = [await Observed.start({"text": f"t{n}"}) for n in range(3)]
    for handle in handles:
        assert (await handle.result(timeout=60))["loud"].startswith("T")

    def scrape() -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.headers["Content-Type"].startswith("text/plain")
            return _samples(response.read().decode())

    workflow = frozenset({("workflow", "Observed")})
    completed = frozenset({("activity", "shout"), ("outcome", "completed")})
    samples = await asyncio.to_thread(scrape)
    assert samples[("loom_workflow_started_total", workflow)] == 3
    assert samples[("loom_workflow_completed_total", workflow)] == 3
    assert samples[("loom_workflow_duration_seconds_count", workflow)] == 3
    assert samples[("loom_activity_duration_seconds_count", completed)] == 3
    assert (
        samples[
            ("loom_activity_schedule_to_start_seconds_count", frozenset({("activity", "shout")}))
        ]
        == 3
    )
    assert ("loom_workflow_failed_total", workflow) not in samples
    # Seconds buckets, and no workflow id in any label.
    assert ("loom_activity_duration_seconds_bucket", completed | {("le", "0.005")}) in samples
    labels = " ".join(str(key[1]) for key in samples)
    assert not any(h.workflow_id in labels for h in handles)

    async def backlog_seen() -> bool:
        found = await asyncio.to_thread(scrape)
        return ("loom_task_backlog", frozenset({("kind", "queued")})) in found

    await _until(backlog_seen, "the task backlog gauge")


@pytest.fixture
def otlp_collector() -> Iterator[list[bytes]]:
    """A loopback OTLP/HTTP endpoint that keeps the export requests it receives."""
    received: list[bytes] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    received.append(f"http://127.0.0.1:{server.server_address[1]}".encode())
    try:
        yield received
    finally:
        server.shutdown()
        server.server_close()


def _json_lines(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


async def test_json_logs_parse_carry_ids_and_replay_adds_none(
    db_path: Path, spawn_worker: Any, tmp_path: Path, otlp_collector: list[bytes]
) -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_collector[0].decode(),
        "OTEL_BSP_SCHEDULE_DELAY": "50",
    }
    args = ("--app", APP, "--log-format", "json", "--lease-seconds", "1")
    first = spawn_worker(db_path, *args, env=env)
    await wait_serving(tmp_path / "worker-0.log")
    handle = await Observed.start({"text": "hi", "wait": True})
    store = get_store()

    async def parked() -> bool:  # the task after the activity committed: it waits for "go"
        events = await store.list_events(handle.workflow_id)
        return any(e.kind is EventKind.SIGNAL_WAIT_STARTED for e in events)

    await _until(parked, "the workflow to wait for its signal")
    first.send_signal(signal.SIGKILL)
    first.wait()
    spawn_worker(db_path, *args, env=env)
    await wait_serving(tmp_path / "worker-1.log")
    await handle.signal("go")
    await handle.result(timeout=60)

    lines = _json_lines(tmp_path / "worker-0.log")
    for line in lines:
        assert {"timestamp", "level", "logger", "message"} <= line.keys()
    (before,) = [line for line in lines if line["message"].endswith("before the signal")]
    assert before["workflow_id"] == handle.workflow_id and before["workflow_name"] == "Observed"
    assert before["level"] == "INFO" and before["logger"] == "loom.workflow"
    assert re.fullmatch(r"[0-9a-f]{32}", before["trace_id"])
    assert re.fullmatch(r"[0-9a-f]{16}", before["span_id"])
    (shouting,) = [line for line in lines if line["message"] == "shouting hi"]
    assert shouting["activity"] == "shout" and shouting["attempt"] == 1
    assert shouting["workflow_id"] == handle.workflow_id and shouting["logger"] == "tests.observed"
    assert shouting["trace_id"] != before["trace_id"] or shouting["span_id"] != before["span_id"]

    # The second worker replayed the whole history: only the new line was written.
    replayed = [line["message"] for line in _json_lines(tmp_path / "worker-1.log")]
    assert not any("before the signal" in m or "shouting" in m for m in replayed), replayed
    assert sum("after the signal" in m for m in replayed) == 1

    async def exported() -> bool:  # the batch processor sends every 50 ms: later under load
        return len(otlp_collector) > 1

    await _until(exported, "spans exported over OTLP/HTTP")


async def test_loom_start_takes_the_callers_traceparent(db_path: Path) -> None:
    """A script's trace context (TRACEPARENT) becomes the workflow's: later tasks join it."""
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "loom",
        "start",
        "Observed",
        "--app",
        APP,
        "--input",
        '{"text": "x"}',
        "--db",
        str(db_path),
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "TRACEPARENT": traceparent},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    events = await get_store().list_events(out.decode().strip())
    assert events[0].kind is EventKind.WORKFLOW_STARTED
    assert events[0].payload["trace"] == {"traceparent": traceparent}
