"""A worker SIGKILLed in the middle of a saga's compensations: after recovery every
compensation has taken effect exactly once, in reverse order."""

from __future__ import annotations

import signal
import sqlite3

import pytest

import loom
from loom.client import get_store
from tests.e2e.conftest import wait_for_line, wait_serving
from tests.e2e.saga_app import GatedTrip


@pytest.mark.timeout(300)
async def test_sigkill_mid_compensation_runs_each_undo_once(db_path, spawn_worker, tmp_path):
    handle = await GatedTrip.start({"folder": str(tmp_path)}, workflow_id="gated-trip")
    first = spawn_worker(db_path, "--lease-seconds", "1", app="tests.e2e.saga_app")
    await wait_serving(tmp_path / "worker-0.log")
    await wait_for_line(tmp_path / "attempts.txt", "unbook b", timeout=120)
    first.send_signal(signal.SIGKILL)  # "unbook c" is done, "unbook b" is mid-flight
    first.wait()
    (tmp_path / "gate").touch()
    spawn_worker(db_path, "--lease-seconds", "1", app="tests.e2e.saga_app")
    with pytest.raises(loom.ActivityFailedError, match="the last booking fails"):
        await handle.result(timeout=120)
    effects = (tmp_path / "effects.txt").read_text().splitlines()
    assert effects == ["book a", "book b", "book c", "unbook c", "unbook b", "unbook a"]
    attempts = (tmp_path / "attempts.txt").read_text().splitlines()
    # The interrupted undo ran again on the new worker; the finished one did not.
    assert attempts == ["unbook c", "unbook b", "unbook b", "unbook a"]
    conn = sqlite3.connect(db_path)
    try:
        rows = conn.execute(
            "SELECT json_extract(payload, '$.seq'), COUNT(*) FROM events "
            "WHERE workflow_id = ? AND kind = 'ACTIVITY_COMPLETED' GROUP BY 1",
            ("gated-trip",),
        ).fetchall()
    finally:
        conn.close()
    assert len(rows) == 6 and all(count == 1 for _, count in rows)
    record = await get_store().get_workflow("gated-trip")
    assert record is not None and record.status is loom.WorkflowStatus.FAILED
