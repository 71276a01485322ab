"""Worker subprocesses on one PostgreSQL: SIGKILL mid-run, LISTEN/NOTIFY wakeups."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator

import pytest

import loom
from loom.client import get_store
from tests.conftest import run_sql
from tests.e2e.app import Arith, Fanout, expected
from tests.e2e.conftest import worker_logs


@pytest.fixture
def pg_db(postgres_url: str) -> Iterator[str]:
    loom.configure(database=postgres_url)
    yield postgres_url
    loom.configure(database=None)


async def _start(count: int) -> list[str]:
    store = get_store()
    ids = [f"arith-{n}" for n in range(count)]
    await asyncio.gather(*(Arith.start({"n": n}, workflow_id=ids[n]) for n in range(count)))
    assert len(await store.get_statuses(ids)) == count
    return ids


async def _wait_all_closed(ids: list[str], timeout: float) -> None:
    store = get_store()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        statuses = await store.get_statuses(ids)
        if all(status.is_closed for status in statuses.values()):
            return
        await asyncio.sleep(0.2)
    statuses = await store.get_statuses(ids)
    pending = [wid for wid, status in statuses.items() if not status.is_closed]
    raise AssertionError(f"{len(pending)} workflows never finished, e.g. {pending[:3]}")


def _assert_exactly_once(url: str, ids: list[str]) -> None:
    [rows, [tasks]] = run_sql(
        url,
        "SELECT workflow_id, (payload::jsonb)->>'seq' AS seq, COUNT(*) AS n FROM events "
        "WHERE kind = 'ACTIVITY_COMPLETED' GROUP BY 1, 2",
        "SELECT COUNT(*) AS n FROM tasks",
    )
    assert all(row["n"] == 1 for row in rows), [tuple(r) for r in rows if r["n"] != 1][:5]
    per_workflow: dict[str, int] = {}
    for row in rows:
        per_workflow[row["workflow_id"]] = per_workflow.get(row["workflow_id"], 0) + 1
    assert per_workflow == dict.fromkeys(ids, 3)
    assert tasks["n"] == 0


def _leased_by_others(url: str) -> int:
    [[row]] = run_sql(url, "SELECT COUNT(*) AS n FROM tasks WHERE lease_owner IS NOT NULL")
    return int(row["n"])


async def _four_workers_one_killed(url: str, spawn_worker, tmp_path, workflows: int) -> None:
    ids = await _start(workflows)
    procs = [spawn_worker(url, "--lease-seconds", "2", "--concurrency", "50") for _ in range(4)]
    store = get_store()
    # Kill one worker once the run is well under way (some workflows done, most not).
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        statuses = await store.get_statuses(ids)
        done = sum(status.is_closed for status in statuses.values())
        if done >= workflows // 10:
            break
        await asyncio.sleep(0.05)
    procs[1].send_signal(signal.SIGKILL)
    procs[1].wait()
    assert _leased_by_others(url) > 0  # the dead worker (or the living) held leases
    await _wait_all_closed(ids, timeout=240)
    records = {r.workflow_id: r for r in await store.get_workflows(ids)}
    for n in range(workflows):
        record = records[f"arith-{n}"]
        assert record.status is loom.WorkflowStatus.COMPLETED, record.error
        assert record.state == expected(n)
    _assert_exactly_once(url, ids)
    logs = worker_logs(tmp_path)
    assert "Traceback" not in logs, logs[-3000:]
    assert "deadlock" not in logs.lower()


@pytest.mark.timeout(240)
async def test_four_workers_2000_workflows_one_sigkilled(pg_db, spawn_worker, tmp_path) -> None:
    await _four_workers_one_killed(pg_db, spawn_worker, tmp_path, workflows=2000)


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_four_workers_10000_workflows_one_sigkilled(pg_db, spawn_worker, tmp_path) -> None:
    await _four_workers_one_killed(pg_db, spawn_worker, tmp_path, workflows=10_000)


@pytest.mark.timeout(120)
async def test_parallel_activities_across_workers_record_each_result_once(
    pg_db, spawn_worker, tmp_path
) -> None:
    """Four results per workflow arrive together while its workflow task commits, on
    three processes: the lock order keeps them from deadlocking, every result lands once."""
    ids = [f"fan-{n}" for n in range(300)]
    await asyncio.gather(*(Fanout.start({"n": n}, workflow_id=ids[n]) for n in range(300)))
    for _ in range(3):
        spawn_worker(pg_db, "--concurrency", "40")
    await _wait_all_closed(ids, timeout=90)
    records = {r.workflow_id: r for r in await get_store().get_workflows(ids)}
    for n, workflow_id in enumerate(ids):
        record = records[workflow_id]
        assert record.status is loom.WorkflowStatus.COMPLETED, record.error
        assert record.state == {"total": 4 * n + 6}
    [rows] = run_sql(
        pg_db,
        "SELECT workflow_id, (payload::jsonb)->>'seq' AS seq, COUNT(*) AS n FROM events "
        "WHERE kind = 'ACTIVITY_COMPLETED' GROUP BY 1, 2 HAVING COUNT(*) > 1",
    )
    assert rows == []
    assert "Traceback" not in worker_logs(tmp_path)


@pytest.mark.timeout(60)
async def test_notify_wakes_an_idle_worker_in_another_process(pg_db, spawn_worker) -> None:
    """The worker polls every 60 s; only NOTIFY from this process can wake it in time."""
    probe = await Arith.start({"n": 1}, workflow_id="probe")  # taken by the first claim
    spawn_worker(pg_db, "--poll-interval", "60", "--lease-seconds", "120")
    assert await probe.result(timeout=30) == expected(1)
    await asyncio.sleep(1.0)  # its tasks done, the worker waits for a wakeup or 60 s
    handle = await Arith.start({"n": 5}, workflow_id="woken")
    assert await handle.result(timeout=15) == expected(5)
