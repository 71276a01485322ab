"""A poison pill: an activity that `os._exit(1)`s its worker every time it runs.

Workers restarted in a loop (real subprocesses, as a supervisor would) must not die forever:
after `--max-recoveries` deaths in a row the workflow is SUSPENDED with the error kept, the
other workflows on those same workers complete exactly once, and nothing else is lost.
"""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
from pathlib import Path

import pytest

import loom
from loom.client import get_store
from tests.e2e.app import Arith, expected
from tests.e2e.conftest import worker_logs
from tests.e2e.poison_app import Poisoned

MAX_RECOVERIES = 3
HEALTHY = 6


async def _until_dead_or_suspended(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """True when the worker died; False when the poisoned workflow got suspended first."""
    store = get_store()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if proc.poll() is not None:
            return True
        if await loom.get_handle("poison").status() is loom.WorkflowStatus.SUSPENDED:
            return False
        await asyncio.sleep(0.1)
    await store.get_workflow("poison")
    raise AssertionError(f"worker neither died nor suspended the workflow in {timeout}s")


def _completed_counts(db: Path) -> list[tuple[str, int, int]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(
            "SELECT workflow_id, json_extract(payload, '$.seq'), COUNT(*) FROM events "
            "WHERE kind = 'ACTIVITY_COMPLETED' GROUP BY 1, 2"
        ).fetchall()
    finally:
        conn.close()


@pytest.mark.timeout(400)
async def test_a_worker_killing_activity_suspends_and_the_rest_completes(
    db_path: Path, spawn_worker, tmp_path: Path
) -> None:
    poison = await Poisoned.start({}, workflow_id="poison")
    healthy = [await Arith.start({"n": n}, workflow_id=f"arith-{n}") for n in range(HEALTHY)]
    args = ("--lease-seconds", "1", "--max-recoveries", str(MAX_RECOVERIES), "--concurrency", "4")
    deaths = 0
    proc = None
    for _ in range(MAX_RECOVERIES + 3):  # a supervisor restarting the worker in a loop
        proc = spawn_worker(db_path, *args, app="tests.e2e.poison_app")
        if not await _until_dead_or_suspended(proc, timeout=120):
            break
        assert proc.returncode == 1, worker_logs(tmp_path)
        deaths += 1
    else:
        raise AssertionError(f"never suspended after {deaths} deaths:\n{worker_logs(tmp_path)}")
    assert deaths == MAX_RECOVERIES
    # The last worker is alive and finishes everything else.
    for n, handle in enumerate(healthy):
        assert await handle.result(timeout=120) == expected(n)
    assert proc is not None and proc.poll() is None
    record = await get_store().get_workflow("poison")
    assert record is not None and record.status is loom.WorkflowStatus.SUSPENDED
    assert record.error is not None and record.error["type"] == "PoisonPillError"
    assert record.error["details"]["recoveries"] == MAX_RECOVERIES
    assert (
        "activity 'crash'" in record.error["message"]
        and "loom resume poison" in record.error["message"]
    )
    assert record.state == {"before": 2}  # what it did before the pill is kept
    # Exactly once, and nothing lost: each healthy workflow's three results, the poisoned
    # one's first; the crashing call still has its task, waiting for a resume.
    counts = _completed_counts(db_path)
    assert all(count == 1 for _, _, count in counts), counts
    per_workflow: dict[str, int] = {}
    for workflow_id, _, _ in counts:
        per_workflow[workflow_id] = per_workflow.get(workflow_id, 0) + 1
    assert per_workflow == {**{h.workflow_id: 3 for h in healthy}, "poison": 1}
    tasks = await get_store().count_tasks()
    assert sum(tasks.values()) == 1, tasks
    assert poison.workflow_id == "poison"
