"""A full disk: callers get a clear error, the worker waits it out, nothing is lost.

SQLite on a small tmpfs (mounting needs root; elsewhere the test skips). The red team saw the
worker exit on the first ENOSPC and stay down.
"""

from __future__ import annotations

import asyncio
import errno
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import loom
from loom.client import get_store
from tests.conftest import configured
from tests.e2e.app import Arith, Bulky, expected
from tests.e2e.conftest import wait_serving, worker_logs

pytestmark = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0, reason="mounting a tmpfs needs root"
)

FILLER_CHUNK = 64 * 1024
BULKY = 12


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
def disk_db(small_disk: Path) -> Iterator[Path | str]:
    yield from configured(small_disk / "loom.db")


def _fill(directory: Path) -> Path:
    """Write a file until the disk refuses; returns it (delete it to free the space)."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        for size in (FILLER_CHUNK, 512, 1):  # then fill to the last byte
            while True:
                try:
                    os.write(fd, b"\0" * size)
                except OSError as err:
                    assert err.errno == errno.ENOSPC, err
                    break
    finally:
        os.close(fd)
    return filler


async def _until(predicate: Any, timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if await asyncio.to_thread(predicate):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{what} within {timeout}s")


def _timers_started(db: Path, count: int) -> bool:
    conn = sqlite3.connect(db)
    try:
        row = conn.execute(
            "SELECT COUNT(DISTINCT workflow_id) FROM events WHERE kind = 'TIMER_STARTED'"
        ).fetchone()
        return int(row[0]) >= count
    finally:
        conn.close()


@pytest.mark.timeout(300)
async def test_a_full_disk_pauses_the_worker_and_loses_nothing(
    disk_db: Path, small_disk: Path, spawn_worker: Any, tmp_path: Path
) -> None:
    proc = spawn_worker(disk_db, "--lease-seconds", "2", "--concurrency", "8")
    await wait_serving(tmp_path / "worker-0.log")
    bulky = [
        await Bulky.start({"n": n, "size": 20_000, "delay": 2}, workflow_id=f"bulky-{n}")
        for n in range(BULKY)
    ]
    await _until(lambda: _timers_started(disk_db, BULKY), 60, "the workflows did not park")
    filler = await asyncio.to_thread(_fill, small_disk)

    # A caller is told, clearly, and nothing of its call is written.
    padding = "p" * 20_000  # each start needs fresh pages: the WAL's spare room runs out
    accepted: list[str] = []
    refused: Exception | None = None
    for n in range(400):
        try:
            handle = await Arith.start({"n": n, "pad": padding}, workflow_id=f"full-{n}")
        except loom.LoomError as err:
            refused = err
            break
        accepted.append(handle.workflow_id)
    assert isinstance(refused, loom.StoreFullError), refused
    assert "disk is full" in str(refused) and "nothing was written" in str(refused)
    assert await get_store().get_workflow(f"full-{len(accepted)}") is None

    # The worker meets the full disk when the timers fire, reports it, and stays up.
    await _until(
        lambda: (
            "the store failed" in worker_logs(tmp_path)
            or "failed in the worker" in worker_logs(tmp_path)
        ),
        timeout=60,
        what="the worker did not report the full disk",
    )
    await asyncio.sleep(3)
    assert proc.poll() is None, worker_logs(tmp_path)[-3000:]

    filler.unlink()
    late = await Arith.start({"n": 7}, workflow_id="after-space-returned")
    for handle in bulky:
        state = await handle.result(timeout=180)
        n = int(handle.workflow_id.split("-")[1])
        assert state == {"first": f"{n}:" + "p" * 20_000, "second": f"{n + 1}:" + "p" * 20_000}
    for workflow_id in [*accepted, late.workflow_id]:
        state = await loom.get_handle(workflow_id).result(timeout=180)
        n = 7 if workflow_id == late.workflow_id else int(workflow_id.split("-")[1])
        assert {k: state[k] for k in ("sum", "product", "final")} == expected(n)
    assert proc.poll() is None
    assert "the store recovered" in worker_logs(tmp_path)

    conn = sqlite3.connect(disk_db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = conn.execute(
            "SELECT workflow_id, json_extract(payload, '$.seq'), COUNT(*) FROM events "
            "WHERE kind = 'ACTIVITY_COMPLETED' GROUP BY 1, 2 HAVING COUNT(*) > 1"
        ).fetchall()
        assert rows == [], "an activity result was recorded twice"
    finally:
        conn.close()
