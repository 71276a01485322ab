from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pytest

import loom

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def spawn_worker(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start `loom worker` subprocesses on a database; all are killed at teardown."""
    procs: list[subprocess.Popen[bytes]] = []
    logs: list[IO[bytes]] = []

    def spawn(
        db: Path | str,
        *extra: str,
        app: str | None = "tests.e2e.app",
        module: str = "loom",
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        log = (tmp_path / f"worker-{len(procs)}.log").open("wb")
        logs.append(log)
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                module,
                "worker",
                *(["--app", app] if app else []),
                "--db",
                str(db),
                "--poll-interval",
                "0.05",
                *extra,
            ],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        )
        procs.append(proc)
        return proc

    yield spawn
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    for log in logs:
        log.close()


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Iterator[Path]:
    """A SQLite database this process's client uses (`loom.configure`), for workers to share."""
    db = tmp_path / "loom.db"
    loom.configure(database=db)
    yield db
    loom.configure(database=None)


def worker_logs(tmp_path: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted(tmp_path.glob("worker-*.log")))


def _says_serving(log: Path) -> bool:
    return log.exists() and "serving" in log.read_text(errors="replace")


async def wait_serving(log: Path, timeout: float = 90) -> None:
    """Readiness handshake: a worker that is still importing must not be treated as if it
    were working (on a loaded machine start-up alone takes seconds)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if await asyncio.to_thread(_says_serving, log):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"worker did not report serving within {timeout}s: {log}")


def _has_line(path: Path, line: str) -> bool:
    return path.exists() and line in path.read_text(errors="replace").splitlines()


async def wait_for_line(path: Path, line: str, timeout: float = 120) -> None:
    """Wait until a worker subprocess wrote `line` to `path` (a handshake on real work)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if await asyncio.to_thread(_has_line, path, line):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{line!r} never appeared in {path}")
