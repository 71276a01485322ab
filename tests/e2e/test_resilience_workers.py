"""Circuit breakers and schedules across real worker processes on one database: the
breaker one process opened holds for another, and two workers start each tick once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import loom
from loom.client import get_store
from loom.cron import tick_workflow_id
from tests.e2e.conftest import ROOT, wait_serving
from tests.e2e.resilience_app import CallGuarded, Tick
from tests.loom.test_breaker import eventually, query

APP = "tests.e2e.resilience_app"


def calls(folder: Path) -> list[str]:
    path = folder / "calls.txt"
    return path.read_text().splitlines() if path.exists() else []


def cli(db: Any, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loom", *args, "--db", str(db)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.timeout(240)
async def test_breaker_opened_by_one_worker_holds_for_another(any_db, spawn_worker, tmp_path):
    (tmp_path / "down").touch()
    first = spawn_worker(any_db, app=APP)
    await wait_serving(tmp_path / "worker-0.log")
    failing = [
        await CallGuarded.start({"folder": str(tmp_path), "caller": f"a{n}"}) for n in range(3)
    ]
    for handle in failing:
        with pytest.raises(loom.ActivityFailedError):
            await handle.result(timeout=120)
    assert len(calls(tmp_path)) == 3
    first.send_signal(signal.SIGKILL)
    first.wait()

    second = spawn_worker(any_db, app=APP)
    await wait_serving(tmp_path / "worker-1.log")
    waiting = [
        await CallGuarded.start({"folder": str(tmp_path), "caller": f"b{n}"}) for n in range(4)
    ]

    async def deferred() -> bool:
        rows = query(any_db, "SELECT 1 FROM tasks WHERE payload LIKE '%deferred_since%'")
        return len(rows) == 4

    await eventually(deferred, "the second worker to defer four calls", timeout=120)
    assert len(calls(tmp_path)) == 3  # the breaker the first worker opened: nothing ran
    shown = cli(any_db, "activity", "show", "guarded")
    assert "open, 0 recent failure(s), opened 1 time(s)" in shown.stdout, shown.stderr

    (tmp_path / "down").unlink()
    reset = cli(any_db, "activity", "reset-breaker", "guarded")
    assert reset.returncode == 0, reset.stderr
    for handle in waiting:
        assert (await handle.result(timeout=120))["reply"].startswith("ok b")
    later = calls(tmp_path)[3:]
    assert sorted(line.split()[0] for line in later) == ["b0", "b1", "b2", "b3"]
    assert {line.split()[1] for line in later} == {str(second.pid)}


@pytest.mark.timeout(240)
async def test_two_worker_processes_start_each_tick_once(any_db, spawn_worker, tmp_path):
    handle = await loom.schedule(
        "every-second", workflow=Tick, cron="* * * * * *", input={}, overlap="allow", catchup="all"
    )
    for n in range(2):
        spawn_worker(any_db, app=APP)
        await wait_serving(tmp_path / f"worker-{n}.log")
    begun = (await handle.describe()).fired_count

    async def fired_enough() -> bool:
        return (await handle.describe()).fired_count >= begun + 8

    await eventually(fired_enough, "eight ticks fired by two workers", timeout=120)
    await handle.pause()
    record = await handle.describe()
    rows = query(
        any_db, "SELECT workflow_id FROM workflows WHERE workflow_id LIKE 'every-second@%'"
    )
    ids = sorted(str(r[0]) for r in rows)
    assert len(ids) == len(set(ids)) == record.fired_count
    # Consecutive seconds, each once: no tick started twice by the two workers, none lost.
    ticks = sorted(_tick_ms(i) for i in ids)
    assert ticks == list(range(ticks[0], ticks[0] + 1000 * len(ticks), 1000))
    assert ids == sorted(tick_workflow_id("every-second", t) for t in ticks)
    await eventually(lambda: _all_closed(ids), "the started workflows to complete", timeout=120)


def _tick_ms(workflow_id: str) -> int:
    from datetime import UTC, datetime

    stamp = workflow_id.split("@", 1)[1].rstrip("Z")
    return int(datetime.fromisoformat(stamp).replace(tzinfo=UTC).timestamp() * 1000)


async def _all_closed(ids: list[str]) -> bool:
    statuses = await get_store().get_statuses(ids)
    return all(s is loom.WorkflowStatus.COMPLETED for s in statuses.values())
