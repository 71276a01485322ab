"""Real worker subprocesses: SIGKILL at random moments, and two workers on one file."""

from __future__ import annotations

import asyncio
import random
import signal
import sqlite3
from pathlib import Path

import pytest

import loom
from loom.client import get_store
from tests.e2e.app import Arith, expected
from tests.e2e.conftest import wait_serving, worker_logs


async def _wait_all_closed(ids: list[str], timeout: float) -> None:
    store = get_store()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        records = await store.get_workflows(ids)
        if all(r.status.is_closed for r in records):
            return
        await asyncio.sleep(0.1)
    pending = [r.workflow_id for r in await store.get_workflows(ids) if not r.status.is_closed]
    raise AssertionError(f"{len(pending)} workflows never finished, e.g. {pending[:3]}")


def _assert_exactly_once(db: Path, ids: list[str]) -> None:
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute(
            "SELECT workflow_id, json_extract(payload, '$.seq'), COUNT(*) FROM events "
            "WHERE kind = 'ACTIVITY_COMPLETED' GROUP BY 1, 2"
        ).fetchall()
        assert all(count == 1 for _, _, count in rows), [r for r in rows if r[2] != 1][:5]
        per_workflow: dict[str, int] = {}
        for workflow_id, _, _ in rows:
            per_workflow[workflow_id] = per_workflow.get(workflow_id, 0) + 1
        assert per_workflow == dict.fromkeys(ids, 3)
        assert conn.execute("SELECT COUNT(*) FROM tasks").fetchone()[0] == 0
    finally:
        conn.close()


def _count(db: Path, query: str) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute(query).fetchone()[0])
    finally:
        conn.close()


def _events(db: Path) -> int:
    return _count(db, "SELECT COUNT(*) FROM events")


async def _until_progress(db: Path, since: int, timeout: float = 90) -> None:
    """Until a worker has written events past `since`: it is doing real work, whatever the
    machine's load (a fixed sleep after "serving" killed idle workers at load 9)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while _events(db) <= since:
        assert loop.time() < deadline, "the worker made no progress"
        await asyncio.sleep(0.02)


def _leased_tasks(db: Path) -> int:
    return _count(db, "SELECT COUNT(*) FROM tasks WHERE lease_owner IS NOT NULL")


async def _start(count: int) -> list[str]:
    handles = [await Arith.start({"n": n}, workflow_id=f"arith-{n}") for n in range(count)]
    return [h.workflow_id for h in handles]


async def _sigkill_run(db_path: Path, spawn_worker, workflows: int, kills: int) -> None:
    ids = await _start(workflows)
    rng = random.Random(7)
    stranded = []
    for index in range(kills):
        before = _events(db_path)
        proc = spawn_worker(db_path, "--lease-seconds", "1", "--concurrency", "4")
        await wait_serving(db_path.parent / f"worker-{index}.log", timeout=90)
        await _until_progress(db_path, before)
        await asyncio.sleep(rng.uniform(0.0, 0.5))  # kill at a random moment of real work
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        stranded.append(_leased_tasks(db_path))
    # The kills really interrupted work: tasks were left leased by a dead worker.
    assert any(stranded), stranded
    spawn_worker(db_path, "--lease-seconds", "1")
    await _wait_all_closed(ids, timeout=120)
    records = {r.workflow_id: r for r in await get_store().get_workflows(ids)}
    for n in range(workflows):
        record = records[f"arith-{n}"]
        assert record.status is loom.WorkflowStatus.COMPLETED, record.error
        assert record.state == expected(n)
    _assert_exactly_once(db_path, ids)


@pytest.mark.timeout(600)
async def test_sigkilled_workers_lose_nothing(db_path, spawn_worker) -> None:
    await _sigkill_run(db_path, spawn_worker, workflows=200, kills=4)


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_sigkill_soak(db_path, spawn_worker) -> None:
    await _sigkill_run(db_path, spawn_worker, workflows=1000, kills=20)


@pytest.mark.timeout(180)
async def test_two_workers_share_one_file(db_path, spawn_worker, tmp_path) -> None:
    ids = await _start(200)
    spawn_worker(db_path, "--concurrency", "20")
    spawn_worker(db_path, "--concurrency", "20")
    await _wait_all_closed(ids, timeout=120)
    records = await get_store().get_workflows(ids)
    assert all(r.status is loom.WorkflowStatus.COMPLETED for r in records)
    _assert_exactly_once(db_path, ids)
    logs = worker_logs(tmp_path)
    assert "database is locked" not in logs
    assert "Traceback" not in logs
