"""Suspend, resume, fork: an operator parks a workflow and lets it go on; a failed one is
continued from a copy of its history without re-running what completed."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import loom
from loom.cli import main
from loom.client import get_store
from loom.history import EventKind
from loom.schema import MIGRATIONS
from loom.store import Store
from tests.conftest import run_sql

CALLS: dict[str, int] = {}
BROKEN = {"charge": True}


@loom.activity(name="suspend-test-reserve", retry=1, timeout=5)
async def reserve(item: str) -> str:
    CALLS["reserve"] = CALLS.get("reserve", 0) + 1
    return f"reserved {item}"


@loom.activity(name="suspend-test-charge", retry=1, timeout=5)
async def charge(item: str) -> str:
    CALLS["charge"] = CALLS.get("charge", 0) + 1
    if BROKEN["charge"]:
        raise RuntimeError("card service rejected the call")
    return f"charged {item}"


@loom.workflow(name="SuspendTestCheckout")
class Checkout(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
    @loom.step
    async def run(self, ctx):  # type: ignore[no-untyped-def]
        ctx.state.reserved = await ctx.activity(reserve, ctx.input["item"])
        ctx.state.charged = await ctx.activity(charge, ctx.input["item"])


@loom.workflow(name="SuspendTestApproval")
class Approval(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
    @loom.step
    async def run(self, ctx):  # type: ignore[no-untyped-def]
        ctx.state.approved = await ctx.wait_for_signal("approve")
        await ctx.sleep(ctx.input.get("nap", 0))
        ctx.state.reserved = await ctx.activity(reserve, "after approval")


@pytest.fixture(autouse=True)
def _reset() -> None:
    CALLS.clear()
    BROKEN["charge"] = True


async def _until(handle: loom.WorkflowHandle[Any], predicate: Any, timeout: float = 30) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if await predicate(handle):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{handle.workflow_id} never got there: {await handle.info()}")


async def _waits_for_signal(handle: loom.WorkflowHandle[Any]) -> bool:
    events = await get_store().list_events(handle.workflow_id)
    return any(e.kind is EventKind.SIGNAL_WAIT_STARTED for e in events)


async def _nothing_claimable(store: Store, workflow_id: str) -> bool:
    """A claim as any worker would make it: no task of the suspended workflow comes back.
    (Probe leases are released at once, so the test changes nothing by looking.)"""
    claimed = await store.claim_tasks("probe", 100, 60_000, lambda _: None)
    await store.release_tasks("probe")
    return all(task.workflow_id != workflow_id for task in claimed)


async def test_suspended_workflow_keeps_signals_and_timers_until_resumed(
    store: Store, make_worker: Any
) -> None:
    async with make_worker([Approval], [reserve]):
        handle = await Approval.start({"nap": 0.2}, workflow_id="approval-1", owner="ann")
        await _until(handle, _waits_for_signal)
        assert await handle.suspend("waiting for the auditors") is True
        (progress,) = (await loom.get_progress("ann"))["workflows"]
        assert progress["status"] == "SUSPENDED"
        assert progress["message"] == "Paused until an operator resumes it"
        assert await handle.suspend() is False  # already suspended: nothing changes
        await handle.signal("approve", {"by": "ada"})
        assert await handle.status() is loom.WorkflowStatus.SUSPENDED
        # The signal is kept in history, but no worker can pick the workflow up.
        kinds = [e.kind for e in await store.list_events(handle.workflow_id)]
        assert kinds[-2:] == [EventKind.WORKFLOW_SUSPENDED, EventKind.SIGNAL_RECEIVED]
        assert await _nothing_claimable(store, handle.workflow_id)
        # The worker is alive and claiming: another workflow runs to its end meanwhile.
        other = await Approval.start({}, workflow_id="approval-2")
        await other.signal("approve", {"by": "bob"})
        assert (await other.result(timeout=30))["reserved"] == "reserved after approval"
        assert await handle.status() is loom.WorkflowStatus.SUSPENDED
        assert await handle.state() == {}
        record = await store.get_workflow(handle.workflow_id)
        assert record is not None and record.error is not None
        assert record.error["message"] == "suspended by an operator: waiting for the auditors"
        with pytest.raises(loom.WorkflowStillRunningError, match="SUSPENDED"):
            await handle.result(timeout=0.3)
        waiting = asyncio.ensure_future(handle.result(timeout=60))  # waits through it
        assert await handle.resume() is True
        assert await handle.resume() is False  # not suspended any more
        assert await waiting == {
            "approved": {"by": "ada"},
            "reserved": "reserved after approval",
        }
    kinds = [e.kind for e in await store.list_events(handle.workflow_id)]
    assert EventKind.WORKFLOW_RESUMED in kinds and EventKind.TIMER_FIRED in kinds


async def test_timer_due_while_suspended_fires_after_resume(store: Store, make_worker: Any) -> None:
    async with make_worker([Approval], [reserve]):
        # Long enough that the suspension lands before the timer is due even on a loaded box
        # (0.3 s was not, at load 9); checked below, so a late one fails as such.
        handle = await Approval.start({"nap": 2.0}, workflow_id="napper")
        await handle.signal("approve", True)
        await _until(
            handle,
            lambda h: _has_kind(h, EventKind.TIMER_STARTED),
        )
        await handle.suspend()
        started = next(
            e
            for e in await store.list_events(handle.workflow_id)
            if e.kind is EventKind.TIMER_STARTED
        )
        fire_at = int(started.payload["fire_at"])
        suspended = next(
            e
            for e in await store.list_events(handle.workflow_id)
            if e.kind is EventKind.WORKFLOW_SUSPENDED
        )
        assert suspended.created_at < fire_at, "suspended only after the timer was due"
        while store.now_ms() <= fire_at + 50:  # the clock passing the due time, not a sync
            await asyncio.sleep(0.05)
        assert await _nothing_claimable(store, handle.workflow_id)
        assert not await _has_kind(handle, EventKind.TIMER_FIRED)
        await handle.resume()
        assert (await handle.result(timeout=30))["reserved"] == "reserved after approval"


async def _has_kind(handle: loom.WorkflowHandle[Any], kind: EventKind) -> bool:
    return any(e.kind is kind for e in await get_store().list_events(handle.workflow_id))


async def test_fork_of_a_failed_workflow_does_not_rerun_completed_activities(
    store: Store, make_worker: Any
) -> None:
    async with make_worker([Checkout], [reserve, charge]):
        handle = await Checkout.start({"item": "book"}, workflow_id="checkout-1")
        with pytest.raises(loom.ActivityFailedError, match="card service rejected"):
            await handle.result(timeout=30)
        assert CALLS == {"reserve": 1, "charge": 1}
        BROKEN["charge"] = False  # the fix is deployed
        fork = await handle.fork(workflow_id="checkout-1-retry")
        assert fork.workflow_id == "checkout-1-retry"
        assert await fork.result(timeout=30) == {
            "reserved": "reserved book",
            "charged": "charged book",
        }
    assert CALLS == {"reserve": 1, "charge": 2}  # reserve did not run again
    assert await handle.status() is loom.WorkflowStatus.FAILED  # the original stays as it was
    started = (await store.list_events("checkout-1-retry"))[0]
    assert started.payload["forked_from"] == {"workflow_id": "checkout-1", "before_sequence": None}
    with pytest.raises(ValueError, match="is taken"):
        await handle.fork(workflow_id="checkout-1-retry")
    with pytest.raises(ValueError, match="fork at sequence 99"):
        await handle.fork(at=99)


async def test_fork_at_a_sequence_copies_only_what_came_before(
    store: Store, make_worker: Any
) -> None:
    BROKEN["charge"] = False
    async with make_worker([Checkout], [reserve, charge]):
        handle = await Checkout.start({"item": "pen"}, workflow_id="checkout-2")
        await handle.result(timeout=30)
        events = await store.list_events("checkout-2")
        first_result = next(e for e in events if e.kind is EventKind.ACTIVITY_COMPLETED)
        # Before the first result: the reserve call is copied but must run again.
        fork = await handle.fork(at=first_result.sequence)
        assert (await fork.result(timeout=30))["charged"] == "charged pen"
    assert CALLS == {"reserve": 2, "charge": 2}


async def test_cancel_of_a_suspended_workflow_closes_it_without_running_its_code(
    store: Store, make_worker: Any
) -> None:
    """Its code may be what is broken: the cancel must not wait for a resume."""
    async with make_worker([Approval], [reserve]):
        handle = await Approval.start({}, workflow_id="doomed")
        await _until(handle, _waits_for_signal)
        await handle.suspend()
        waiting = asyncio.ensure_future(handle.result(timeout=30))
        await handle.signal("approve", True)
        await handle.cancel("not needed any more")
        with pytest.raises(loom.CancelledWorkflowError, match="not needed any more"):
            await waiting
    assert await handle.status() is loom.WorkflowStatus.CANCELED
    assert CALLS == {}
    assert await store.count_tasks() == {"leased": 0, "expired": 0, "queued": 0}
    kinds = [e.kind for e in await store.list_events("doomed")]
    assert kinds[-2:] == [EventKind.CANCEL_REQUESTED, EventKind.WORKFLOW_CANCELED]


@loom.workflow(name="SuspendTestParent")
class Parent(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
    @loom.step
    async def run(self, ctx):  # type: ignore[no-untyped-def]
        ctx.state.child = await ctx.start_workflow(Approval, {})


async def test_cancelling_a_parent_closes_its_suspended_child(
    store: Store, make_worker: Any
) -> None:
    async with make_worker([Parent, Approval], [reserve]):
        parent = await Parent.start({}, workflow_id="parent")
        for _ in range(600):
            children = [r for r in await store.list_workflows() if r.parent_id == "parent"]
            if children and await _waits_for_signal(loom.get_handle(children[0].workflow_id)):
                break
            await asyncio.sleep(0.02)
        child = loom.get_handle(children[0].workflow_id)
        await child.suspend()
        await parent.cancel("stop everything")
        with pytest.raises(loom.CancelledWorkflowError):
            await parent.result(timeout=30)
        with pytest.raises(loom.CancelledWorkflowError, match="parent workflow 'parent'"):
            await child.result(timeout=30)


async def test_suspend_and_resume_refuse_finished_or_unknown_workflows(
    store: Store, make_worker: Any
) -> None:
    BROKEN["charge"] = False
    async with make_worker([Checkout], [reserve, charge]):
        handle = await Checkout.start({"item": "cup"})
        await handle.result(timeout=30)
    with pytest.raises(loom.WorkflowClosedError, match="COMPLETED; it cannot be suspended"):
        await handle.suspend()
    with pytest.raises(loom.WorkflowClosedError, match="COMPLETED; it cannot be resumed"):
        await handle.resume()
    with pytest.raises(loom.WorkflowNotFoundError):
        await loom.get_handle("nope").suspend()


def test_cli_suspend_inspect_list_doctor_resume_fork(db_path: Path) -> None:
    """What an operator sees and types; the workflow is parked before any worker runs."""
    runner = CliRunner()
    db = str(db_path)

    async def start() -> None:
        await Approval.start({}, workflow_id="cli-1")

    asyncio.run(start())
    result = runner.invoke(main, ["suspend", "cli-1", "--reason", "audit", "--db", db])
    assert result.exit_code == 0, result.output
    assert "suspended cli-1" in result.output
    listed = runner.invoke(main, ["list", "--status", "SUSPENDED", "--db", db])
    assert listed.exit_code == 0 and "cli-1" in listed.output
    inspected = runner.invoke(main, ["inspect", "cli-1", "--db", db])
    assert "SUSPENDED" in inspected.output
    assert "suspended by an operator: audit" in inspected.output
    assert "loom resume cli-1" in inspected.output
    stats = runner.invoke(main, ["stats", "--json", "--db", db])
    assert '"SUSPENDED": 1' in stats.output
    doctor = runner.invoke(main, ["doctor", "--db", db])
    assert "suspended workflows" in doctor.output
    assert "1 workflow(s) SUSPENDED" in doctor.stderr and "loom resume ID" in doctor.stderr
    resumed = runner.invoke(main, ["resume", "cli-1", "--db", db])
    assert resumed.exit_code == 0 and "resumed cli-1" in resumed.output
    again = runner.invoke(main, ["resume", "cli-1", "--db", db])
    assert again.exit_code == 0 and "not suspended" in again.output
    forked = runner.invoke(main, ["fork", "cli-1", "--id", "cli-2", "--db", db])
    assert forked.exit_code == 0 and forked.output.strip() == "cli-2"
    bad = runner.invoke(main, ["fork", "cli-1", "--at", "0", "--db", db])
    assert bad.exit_code == 2 and "give a sequence from 2" in bad.output
    missing = runner.invoke(main, ["resume", "nope", "--db", db])
    assert missing.exit_code == 1 and "WorkflowNotFoundError" in missing.output


async def test_migration_upgrades_a_database_of_the_previous_schema(tmp_path: Path) -> None:
    """A database written before `tasks.recoveries` existed opens, migrates in place and
    keeps its tasks (SQLite; PostgreSQL runs the same ALTER in the same migration list)."""
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE schema_migrations (component TEXT NOT NULL, version INTEGER NOT NULL, "
        "applied_at INTEGER NOT NULL, PRIMARY KEY (component, version))"
    )
    previous = MIGRATIONS[:-1]
    for version, script in enumerate(previous, start=1):
        for statement in filter(str.strip, script.split(";")):
            conn.execute(statement)
        conn.execute("INSERT INTO schema_migrations VALUES ('loom', ?, 0)", (version,))
    conn.execute(
        "INSERT INTO tasks (task_key, workflow_id, kind, payload, run_at) "
        "VALUES ('w:old', 'old', 'workflow', '{}', 0)"
    )
    conn.commit()
    conn.close()
    store = get_store(path)
    try:
        found = await store.diagnose()
        assert found.schema_version == found.latest_schema_version == len(MIGRATIONS)
        assert await store.count_tasks() != {}
    finally:
        await store.close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT task_key, recoveries FROM tasks").fetchall() == [("w:old", 0)]
    finally:
        conn.close()


async def test_postgres_migration_upgrades_a_schema_of_the_previous_version(
    postgres_url: str,
) -> None:
    from loom.postgres_store import MIGRATIONS as PG_MIGRATIONS

    schema = postgres_url.rsplit("search_path=", 1)[1]
    base = postgres_url.rsplit("?", 1)[0] if "?search_path=" in postgres_url else postgres_url
    statements = [
        f"SET search_path = {schema}",
        "CREATE TABLE schema_migrations (component TEXT NOT NULL, version BIGINT NOT NULL, "
        "applied_at BIGINT NOT NULL, PRIMARY KEY (component, version))",
    ]
    for version, script in enumerate(PG_MIGRATIONS[:-1], start=1):
        statements += [part for part in script.split(";") if part.strip()]
        statements.append(f"INSERT INTO schema_migrations VALUES ('loom', {version}, 0)")
    statements.append(
        "INSERT INTO tasks (task_key, workflow_id, kind, payload, run_at) "
        "VALUES ('w:old', 'old', 'workflow', '{}', 0)"
    )
    run_sql(base, *statements)
    store = get_store(postgres_url)
    try:
        found = await store.diagnose()
        assert found.schema_version == found.latest_schema_version == len(MIGRATIONS)
    finally:
        await store.close()
    rows = run_sql(base, f"SELECT task_key, recoveries FROM {schema}.tasks")
    assert [tuple(r) for r in rows[0]] == [("w:old", 0)]
