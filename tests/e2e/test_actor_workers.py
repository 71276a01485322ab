"""Actors served by real worker subprocesses, on both stores: SIGKILL between and during
messages loses nothing and doubles nothing; two workers handle each message once."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import pytest

import loom
from loom.client import get_store
from loom.mailbox import actor_id
from tests.e2e.actor_app import Ledger
from tests.e2e.conftest import wait_serving, worker_logs


async def _wait_handled(key: str, at_least: int, timeout: float = 120) -> None:
    """Handshake on real work: the actor's committed state holds `at_least` messages."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        record = await get_store().get_workflow(actor_id(Ledger, key))
        if record is not None and len(record.state.get("ids", [])) >= at_least:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"actor {key} never handled {at_least} messages")


async def _sigkill_run(tmp_path: Path, db: Any, spawn_worker: Any, kills: int) -> None:
    total = 12 * (kills + 1)
    for message_id in range(total):
        await loom.send(Ledger, "k", "add", message_id)
    for index in range(kills):
        proc = spawn_worker(db, "--app", "tests.e2e.actor_app", "--lease-seconds", "1", app=None)
        await wait_serving(tmp_path / f"worker-{index}.log")
        await _wait_handled("k", 12 * (index + 1) - 6)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    spawn_worker(db, "--app", "tests.e2e.actor_app", "--lease-seconds", "1", app=None)
    try:
        ids = await loom.ask(Ledger, "k", "ids", timeout=180)
    except TimeoutError:
        raise AssertionError(worker_logs(tmp_path)) from None
    assert ids == list(range(total))  # nothing lost, nothing doubled, in arrival order
    record = await get_store().get_workflow(actor_id(Ledger, "k"))
    assert record is not None and record.input["snapshots"] >= 1


async def test_sigkill_loses_nothing_and_doubles_nothing(
    tmp_path: Path, any_db: Any, spawn_worker: Any
) -> None:
    await _sigkill_run(tmp_path, any_db, spawn_worker, kills=2)


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_sigkill_soak(tmp_path: Path, any_db: Any, spawn_worker: Any) -> None:
    await _sigkill_run(tmp_path, any_db, spawn_worker, kills=20)


@pytest.mark.timeout(300)
async def test_two_workers_handle_each_message_once(
    tmp_path: Path, any_db: Any, spawn_worker: Any
) -> None:
    for index in range(2):
        # Two slots each: one worker cannot take every actor at once, so both serve some.
        spawn_worker(any_db, "--app", "tests.e2e.actor_app", "--concurrency", "2", app=None)
        await wait_serving(tmp_path / f"worker-{index}.log")
    keys = [f"key-{n}" for n in range(8)]
    await asyncio.gather(
        *(loom.send(Ledger, key, "add", message_id) for message_id in range(15) for key in keys)
    )
    try:
        answers = await asyncio.gather(*(loom.ask(Ledger, key, "ids", timeout=180) for key in keys))
    except TimeoutError:
        raise AssertionError(worker_logs(tmp_path)) from None
    assert all(sorted(ids) == list(range(15)) for ids in answers), answers
    records = await get_store().get_workflows([actor_id(Ledger, key) for key in keys])
    pids: set[str] = set()
    for record in records:
        assert sum(record.state["pids"].values()) == len(record.state["ids"])
        pids |= set(record.state["pids"])
    assert len(pids) == 2  # both workers served actors
