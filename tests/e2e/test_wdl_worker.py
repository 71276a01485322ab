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


def _loom_fails(db: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "loom", *args, "--db", str(db)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1, (done.stdout, done.stderr)
    return done.stderr


def _greeting(version: str, key: str) -> dict[str, object]:
    return {
        "name": "greeter",
        "version": version,
        "steps": [
            {"id": "hold", "type": "wait", "event": "go", "output": key},
            {"id": "nap", "type": "sleep", "duration": 10},
        ],
    }


@pytest.mark.timeout(300)
async def test_registered_definitions_run_without_app(db_path, spawn_worker, tmp_path) -> None:
    """`loom wdl register` stores immutable versions; `loom start NAME@RANGE` picks one; a
    worker without --app runs it, and a version registered later changes only new runs."""
    v1, v2, changed = tmp_path / "v1.json", tmp_path / "v2.json", tmp_path / "changed.json"
    v1.write_text(json.dumps(_greeting("1.0.0", "first")))
    v2.write_text(json.dumps(_greeting("1.1.0", "second")))
    changed.write_text(json.dumps(_greeting("1.0.0", "other")))
    await asyncio.to_thread(_loom, db_path, "init")
    out = await asyncio.to_thread(_loom, db_path, "wdl", "register", str(v1), "--json")
    assert json.loads(out)["created"] is True
    again = await asyncio.to_thread(_loom, db_path, "wdl", "register", str(v1))
    assert again.startswith("already registered")
    error = await asyncio.to_thread(_loom_fails, db_path, "wdl", "register", str(changed))
    assert "DefinitionConflictError" in error and "immutable" in error

    spawn_worker(db_path, app=None)
    await wait_serving(tmp_path / "worker-0.log")
    first = await asyncio.to_thread(
        _loom, db_path, "start", "greeter@^1", "--id", "greet-1", "--input", "{}"
    )
    await asyncio.to_thread(_loom, db_path, "wdl", "register", str(v2))
    second = await asyncio.to_thread(_loom, db_path, "start", "greeter@^1", "--id", "greet-2")
    pinned = await asyncio.to_thread(_loom, db_path, "start", "greeter@~1.0", "--id", "greet-3")
    assert (first, second, pinned) == ("greet-1", "greet-2", "greet-3")
    for workflow_id in (first, second, pinned):
        await asyncio.to_thread(_loom, db_path, "signal", workflow_id, "go", "--payload", "1")
    assert await loom.get_handle("greet-1").result(timeout=120) == {"first": 1}
    assert await loom.get_handle("greet-2").result(timeout=120) == {"second": 1}
    assert await loom.get_handle("greet-3").result(timeout=120) == {"first": 1}

    listed = json.loads(await asyncio.to_thread(_loom, db_path, "wdl", "list", "--json"))
    assert [(d["name"], d["version"]) for d in listed["definitions"]] == [
        ("greeter", "1.0.0"),
        ("greeter", "1.1.0"),
    ]
    shown = json.loads(await asyncio.to_thread(_loom, db_path, "wdl", "show", "greeter", "--json"))
    assert shown["version"] == "1.1.0" and shown["versions"] == ["1.0.0", "1.1.0"]
    assert shown["steps"] == ["hold", "nap"]
    old = await asyncio.to_thread(_loom, db_path, "wdl", "show", "greeter", "--version", "1.0.0")
    assert "1.0.0" in old
    graph = await asyncio.to_thread(_loom, db_path, "wdl", "graph", "greeter")
    assert graph.startswith("flowchart") and "hold" in graph
    missing = await asyncio.to_thread(_loom_fails, db_path, "start", "nobody@^1")
    assert "no definition named 'nobody'" in missing
    unmet = await asyncio.to_thread(_loom_fails, db_path, "start", "greeter@^2")
    assert "no version of 'greeter' satisfies '^2'" in unmet and "1.1.0" in unmet
