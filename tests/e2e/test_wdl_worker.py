"""Definitions on real worker subprocesses: a SIGKILL mid-definition loses nothing and runs
no finished step again; `--app FILE.json` serves a definition file with no Python module."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import loom
import loom.wdl
from tests.e2e.conftest import ROOT, wait_for_line, wait_serving
from tests.e2e.wdl_app import gated_flow
from tests.wasm_activities.build import EXAMPLES_DIR, build_example


@pytest.mark.timeout(300)
async def test_sigkill_mid_definition_recovers_exactly_once(db_path, spawn_worker, tmp_path):
    handle = await gated_flow.start({"folder": str(tmp_path)}, workflow_id="gated-flow-1")
    first = spawn_worker(db_path, "--lease-seconds", "1", app="tests.e2e.wdl_app")
    await wait_serving(tmp_path / "worker-0.log")
    await wait_for_line(tmp_path / "marks.txt", "started gated", timeout=120)
    first.send_signal(signal.SIGKILL)
    first.wait()
    (tmp_path / "gate").touch()
    spawn_worker(db_path, "--lease-seconds", "1", app="tests.e2e.wdl_app")
    state = await handle.result(timeout=120)
    assert state == {"first": "first", "gated": "gated", "last": "last"}
    marks = (tmp_path / "marks.txt").read_text().splitlines()
    assert marks == ["done first", "started gated", "started gated", "done gated", "done last"]
    conn = sqlite3.connect(db_path)
    try:
        rows = conn.execute(
            "SELECT json_extract(payload, '$.seq'), COUNT(*) FROM events "
            "WHERE workflow_id = ? AND kind = 'ACTIVITY_COMPLETED' GROUP BY 1",
            ("gated-flow-1",),
        ).fetchall()
    finally:
        conn.close()
    assert len(rows) == 3 and all(count == 1 for _, count in rows)


def _loom(db: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "loom", *args, "--db", str(db)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.timeout(300)
async def test_worker_serves_a_definition_file(db_path, spawn_worker, tmp_path) -> None:
    """No Python at all: a definition calling a registered WASM activity by range."""
    build_example("word-count")
    manifest = str(EXAMPLES_DIR / "word-count" / "activity.toml")
    await asyncio.to_thread(_loom, db_path, "activity", "register", manifest)
    definition = tmp_path / "nap.json"
    definition.write_text(
        json.dumps(
            {
                "name": "wait-then-nap",
                "steps": [
                    {"id": "hold", "type": "wait", "event": "go", "output": "go"},
                    {"id": "nap", "type": "sleep", "duration": "{{ go.ms }}"},
                    {
                        "id": "count",
                        "type": "activity",
                        "activity": "word-count@^1",
                        "input": {"text": "{{ go.text }}"},
                        "output": "counts",
                    },
                ],
            }
        )
    )
    spawn_worker(db_path, app=str(definition))
    await wait_serving(tmp_path / "worker-0.log")
    args = ["--app", str(definition), "--input", "{}", "--id", "nap-1"]
    workflow_id = await asyncio.to_thread(_loom, db_path, "start", "wait-then-nap", *args)
    assert workflow_id == "nap-1"
    await asyncio.to_thread(
        _loom, db_path, "signal", "nap-1", "go", "--payload", '{"ms": 20, "text": "one two three"}'
    )
    state = await loom.get_handle("nap-1").result(timeout=120)
    assert state == {
        "go": {"ms": 20, "text": "one two three"},
        "counts": {"words": 3, "chars": 13},
    }
