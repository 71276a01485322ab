"""Fixtures of the dashboard tests: a real `loom web` and a real `loom worker`, each in its
own process on the test's database, started with a readiness handshake."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import ROOT, spawn_worker

__all__ = ["spawn_worker"]

APP = "tests.web.app"
STARTUP_TIMEOUT_S = 60.0
_SERVING = re.compile(r"serving (http://\S+/)")


def wait_for_log(log: Path, pattern: re.Pattern[str], timeout: float = STARTUP_TIMEOUT_S) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists():
            match = pattern.search(log.read_text(errors="replace"))
            if match:
                return match.group(1) if match.groups() else match.group(0)
        time.sleep(0.05)
    text = log.read_text(errors="replace") if log.exists() else "(no log)"
    raise AssertionError(f"no {pattern.pattern!r} in {log} within {timeout}s:\n{text}")


class WebServer:
    def __init__(self, proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
        self.proc = proc
        self.url = url.rstrip("/")
        self.log = log

    def stop(self, timeout: float = 10.0) -> int:
        """Ctrl-C, as an operator stops it; the exit code (it must stop by itself)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout)


@pytest.fixture
def serve_web(tmp_path: Path) -> Iterator[Callable[..., WebServer]]:
    """Start `loom web --port 0` on a database; the printed URL is the readiness handshake."""
    servers: list[WebServer] = []

    def serve(db: Path | str, *extra: str, env: dict[str, str] | None = None) -> WebServer:
        log = tmp_path / f"web-{len(servers)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "loom",
                    "web",
                    "--port",
                    "0",
                    "--db",
                    str(db),
                    "--app",
                    APP,
                    *extra,
                ],
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
            )
        server = WebServer(proc, "", log)
        servers.append(server)
        server.url = wait_for_log(log, _SERVING).rstrip("/")
        return server

    yield serve
    for server in servers:
        if server.proc.poll() is None:
            server.proc.kill()
        server.proc.wait()


def start_worker(
    spawn: Callable[..., subprocess.Popen[bytes]], db: Path | str, tmp_path: Path
) -> None:
    index = len(list(tmp_path.glob("worker-*.log")))
    spawn(db, app=APP)
    wait_for_log(tmp_path / f"worker-{index}.log", re.compile("serving"))


def start_workflow(db: Path | str, workflow_id: str, input_json: str, owner: str = "ann") -> None:
    """`loom start` in its own process, as an operator (or another service) would."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "loom",
            "start",
            "Approval",
            "--app",
            APP,
            "--db",
            str(db),
            "--id",
            workflow_id,
            "--owner",
            owner,
            "--input",
            input_json,
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
    )
