"""Leases and timers are judged on the store's one clock, not on each process's wall clock.

A worker whose wall clock runs 60 s ahead used to see every live lease as expired and run
side effects a second time; a wall-clock step of +1 h fired a 30 s timer at once, and -1 h held
a 3 s timer for an hour. See `loom.clock`.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

import loom
from loom.clock import StoreClock, boot_id, wall_ms
from loom.sqlite_store import SQLiteStore
from tests.e2e.conftest import wait_serving
from tests.e2e.skew_app import SkewOnce

CALLS = 4


def _read_lines(journal: Path) -> list[str]:
    return journal.read_text().splitlines() if journal.exists() else []


async def _lines(journal: Path, count: int, timeout: float) -> list[str]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if len(lines := await asyncio.to_thread(_read_lines, journal)) >= count:
            return lines
        await asyncio.sleep(0.05)
    raise AssertionError(f"fewer than {count} executions began within {timeout}s")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("skew", [60.0, -60.0])
async def test_a_worker_with_a_skewed_clock_never_takes_a_live_lease(
    any_db: Path | str, spawn_worker: Any, tmp_path: Path, skew: float
) -> None:
    """Worker A (true clock) runs the side effects; worker B, skewed, joins while they run.
    Every effect runs once; B does work too (its claims see the same due times)."""
    journal = tmp_path / "journal.txt"
    spawn_worker(any_db, "--lease-seconds", "3", "--concurrency", "8", app="tests.e2e.skew_app")
    await wait_serving(tmp_path / "worker-0.log")
    slow = [
        await SkewOnce.start(
            {"journal": str(journal), "key": f"slow-{n}", "seconds": 6}, workflow_id=f"slow-{n}"
        )
        for n in range(CALLS)
    ]
    await _lines(journal, CALLS, timeout=60)
    spawn_worker(
        any_db,
        "--lease-seconds",
        "3",
        app="tests.e2e.skew_app",
        module="tests.e2e.skewed_clock",
        env={"LOOM_TEST_CLOCK_SKEW": str(skew)},
    )
    await wait_serving(tmp_path / "worker-1.log")
    fast = [
        await SkewOnce.start(
            {"journal": str(journal), "key": f"fast-{n}", "seconds": 0.05},
            workflow_id=f"fast-{n}",
        )
        for n in range(20)
    ]
    for handle in slow + fast:
        state = await handle.result(timeout=120)
        assert state["done"] == handle.workflow_id
    lines = await asyncio.to_thread(_read_lines, journal)
    expected = [f"start {h.workflow_id}" for h in slow + fast]
    assert sorted(lines) == sorted(expected), "a side effect ran twice"


@loom.workflow(name="Napper")
class Napper(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
    @loom.step
    async def nap(self, ctx):  # type: ignore[no-untyped-def]
        await ctx.sleep(ctx.input["seconds"])
        ctx.state.woke = True


@pytest.mark.timeout(120)
@pytest.mark.parametrize("step_hours", [1, -1])
async def test_timers_fire_on_time_across_a_wall_clock_step(
    any_db: Path | str, monkeypatch: pytest.MonkeyPatch, step_hours: int
) -> None:
    loop = asyncio.get_running_loop()
    async with loom.Worker(workflows=[Napper], poll_interval=0.05):
        began = loop.time()
        handle = await Napper.start({"seconds": 3})
        await asyncio.sleep(0.3)  # the timer is recorded on the clock as it was
        real_time, real_time_ns = time.time, time.time_ns
        shift = step_hours * 3600
        monkeypatch.setattr(time, "time", lambda: real_time() + shift)
        monkeypatch.setattr(time, "time_ns", lambda: real_time_ns() + shift * 10**9)
        assert await handle.result(timeout=60) == {"woke": True}
        elapsed = loop.time() - began
    assert 2.9 <= elapsed < 30, f"a 3 s timer fired after {elapsed:.2f}s"


def test_the_sqlite_clock_is_anchored_once_per_boot(tmp_path: Path) -> None:
    """Every process of one boot reads the same anchor back; a reboot starts a new one."""
    path = tmp_path / "clock.db"
    first = SQLiteStore(path)
    second = SQLiteStore(path)
    try:
        assert abs(first.now_ms() - second.now_ms()) <= 2
        assert abs(first.now_ms() - wall_ms()) < 1000
    finally:
        first.close_sync()
        second.close_sync()
    conn = sqlite3.connect(path)
    with conn:
        [(stored,)] = conn.execute("SELECT boot_id FROM clock").fetchall()
        assert stored == boot_id()
        # The row a previous boot left: its monotonic reading means nothing now.
        conn.execute("UPDATE clock SET boot_id = 'an-earlier-boot', wall_ms = 0")
    conn.close()
    rebooted = SQLiteStore(path)
    try:
        assert abs(rebooted.now_ms() - wall_ms()) < 1000
    finally:
        rebooted.close_sync()


def test_a_store_clock_ignores_wall_clock_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = StoreClock.local()
    before = clock.now_ms()
    real_time_ns = time.time_ns
    monkeypatch.setattr(time, "time_ns", lambda: real_time_ns() + 3600 * 10**9)
    assert 0 <= clock.now_ms() - before < 1000
