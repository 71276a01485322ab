"""Operator CLI as real subprocesses against a real `loom worker` subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import loom

REPO = Path(__file__).resolve().parents[2]
QUIZ_INPUT = json.dumps({"student": "ann", "answers": ["b", "a", "d", "c"]})


def _env(db: Path) -> dict[str, str]:
    env = {**os.environ, "LOOM_DATABASE": str(db), "PYTHONPATH": str(REPO)}
    env.pop("LOOM_DEBUG", None)
    return env


def loom_cli(*args: str, db: Path, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    """Run the real `loom` CLI in a subprocess against `db`."""
    return subprocess.run(
        [sys.executable, "-m", "loom", *args],
        capture_output=True,
        text=True,
        env=_env(db),
        cwd=cwd,
        timeout=60,
        check=False,
    )


def loom_json(*args: str, db: Path, cwd: Path = REPO) -> Any:
    result = loom_cli(*args, "--json", db=db, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@contextlib.contextmanager
def worker_process(db: Path, app: str, cwd: Path = REPO) -> Iterator[subprocess.Popen[str]]:
    """`loom worker --app APP` in a subprocess; stopped with SIGTERM (SIGKILL if it hangs)."""
    log = (db.parent / f"worker-{app}.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "loom", "worker", "--app", app, "--poll-interval", "0.05"],
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(db),
        cwd=cwd,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.close()


def wait_for(description: str, probe: Any, timeout: float = 30) -> Any:
    """Poll `probe()` until it returns something truthy (a deadline, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"gave up waiting for {description}")


async def _watch_progress(db: Path, owner: str, wanted: str) -> list[Any]:
    """Stream progress from this process while the worker runs in another (polling path)."""
    seen = []
    stream = loom.stream_progress(owner=owner, database=str(db), poll_interval=0.05)
    async with contextlib.aclosing(stream):
        async for snapshot in stream:
            seen.append(snapshot)
            if any(w["message"] == wanted for w in snapshot):
                return seen
    raise AssertionError("stream ended")


@pytest.mark.timeout(120)
def test_start_signal_inspect_list_against_a_worker(tmp_path: Path) -> None:
    db = tmp_path / "loom.db"
    assert loom_cli("init", db=db).returncode == 0
    with worker_process(db, "examples.quiz") as worker:
        started = loom_cli(
            "start", "Quiz", "--app", "examples.quiz", "--id", "q1", "--owner", "u1",
            "--input", QUIZ_INPUT, db=db,
        )  # fmt: skip
        assert started.returncode == 0, started.stderr
        assert started.stdout == "q1\n"

        seen = asyncio.run(_watch_progress(db, "u1", "Robin is waiting for the teacher"))
        assert seen[-1][0]["current_step"] == 2
        assert seen[-1][0]["total_steps"] == 2

        inspected = loom_json("inspect", "q1", "--events", db=db)
        assert inspected["status"] == "RUNNING"
        assert inspected["current_step"] == "review"
        assert inspected["state"] == {"score": 4}
        assert [e["kind"] for e in inspected["events"]][:3] == [
            "WORKFLOW_STARTED", "STEP_STARTED", "ACTIVITY_SCHEDULED",
        ]  # fmt: skip

        sent = loom_cli("signal", "q1", "approve", "--payload", '{"teacher": "mr t"}', db=db)
        assert sent.returncode == 0, sent.stderr

        def completed() -> Any:
            [row] = loom_json("list", "--owner", "u1", db=db)
            return row if row["status"] == "COMPLETED" else None

        row = wait_for("q1 to complete", completed)
        assert row["workflow_id"] == "q1"
        final = loom_json("inspect", "q1", db=db)
        assert final["state"] == {"score": 4, "approved_by": "mr t", "status": "final"}
        assert loom_json("stats", db=db)["workflows"]["COMPLETED"] == 1
        assert loom_json("doctor", db=db)["is_healthy"] is True
        assert "graded ann: 4" in loom_cli("logs", "q1", db=db).stdout

        closed = loom_cli("signal", "q1", "approve", db=db)
        assert closed.returncode == 1
        assert closed.stderr.startswith("WorkflowClosedError: workflow 'q1' is COMPLETED")

        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=20) == 0
    assert "stopped" in (tmp_path / "worker-examples.quiz.log").read_text()


@pytest.mark.timeout(150)
def test_worker_stops_cleanly_on_sigint(tmp_path: Path) -> None:
    db = tmp_path / "loom.db"
    assert loom_cli("init", db=db).returncode == 0
    with worker_process(db, "examples.quiz") as worker:
        log = tmp_path / "worker-examples.quiz.log"
        wait_for("the worker to start", lambda: "serving" in log.read_text())
        worker.send_signal(signal.SIGINT)
        assert worker.wait(timeout=90) == 0  # it did exit 0, after 20 s, at load 9
    assert "Traceback" not in log.read_text()


DRIFT_APP = """
import loom


@loom.activity
async def {activity}(x: int) -> int:
    return x + 1


@loom.workflow(name="Drift")
class DriftWorkflow(loom.Workflow[dict, dict]):
    @loom.step
    async def only(self, ctx):
        await ctx.state.set("y", await ctx.activity({activity}, 1))
"""


@pytest.mark.timeout(120)
def test_replay_reports_non_determinism_and_changes_nothing(tmp_path: Path) -> None:
    db = tmp_path / "loom.db"
    for module, activity in (("drift_v1", "add_one"), ("drift_v2", "add_two")):
        (tmp_path / f"{module}.py").write_text(textwrap.dedent(DRIFT_APP.format(activity=activity)))
    assert loom_cli("init", db=db).returncode == 0
    with worker_process(db, "drift_v1", cwd=tmp_path):
        for workflow_id in ("d1", "d2"):
            started = loom_cli(
                "start", "Drift", "--app", "drift_v1", "--id", workflow_id, db=db, cwd=tmp_path
            )
            assert started.returncode == 0, started.stderr
        wait_for(
            "both to complete",
            lambda: len(loom_json("list", "--status", "COMPLETED", db=db, cwd=tmp_path)) == 2,
        )
    before = loom_json("inspect", "d1", "--events", db=db)

    same = loom_cli("replay", "--all", "--app", "drift_v1", db=db, cwd=tmp_path)
    assert same.returncode == 0, same.stderr
    assert same.stdout == "replayed 2 workflow(s): 2 ok, 0 non-deterministic, 0 skipped\n"

    drifted = loom_cli("replay", "--all", "--app", "drift_v2", "--json", db=db, cwd=tmp_path)
    assert drifted.returncode == 1, drifted.stderr
    report = json.loads(drifted.stdout)
    assert (report["replayed"], report["non_deterministic"]) == (2, 2)
    mismatch = next(w for w in report["workflows"] if w["workflow_id"] == "d1")
    assert "add_one" in mismatch["expected"] and "add_two" in mismatch["actual"]

    single = loom_cli("replay", "d1", "--app", "drift_v2", db=db, cwd=tmp_path)
    assert single.returncode == 1
    assert single.stdout.startswith("non_deterministic\td1\t")
    assert loom_json("inspect", "d1", "--events", db=db) == before


def test_errors_are_one_line_without_traceback(tmp_path: Path) -> None:
    db = tmp_path / "loom.db"
    missing = loom_cli("list", db=db)
    assert missing.returncode == 1 and missing.stdout == ""
    assert missing.stderr.startswith("DatabaseNotFoundError: ")
    assert missing.stderr.count("\n") == 1
    assert not db.exists()

    assert loom_cli("init", db=db).returncode == 0
    unknown = loom_cli("inspect", "nope", db=db)
    assert (unknown.returncode, unknown.stdout) == (1, "")
    assert unknown.stderr == (
        "WorkflowNotFoundError: workflow 'nope' not found; "
        "check the id (loom list shows known workflows)\n"
    )
    debug = loom_cli("--debug", "inspect", "nope", db=db)
    assert debug.returncode == 1
    assert "Traceback" in debug.stderr
    assert debug.stderr.splitlines()[-1].startswith("WorkflowNotFoundError: ")

    usage = loom_cli("list", "--limit", "zero", db=db)
    assert usage.returncode == 2
    assert "Traceback" not in usage.stderr
