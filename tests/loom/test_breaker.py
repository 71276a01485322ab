"""Circuit breakers: open after N failed attempts in the window, run nothing while open,
let one probe through when half-open, and defer attempts without spending their retries."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

import loom
from loom.breaker import Breaker, BreakerCall, BreakerResult, BreakerState
from loom.client import get_store
from loom.history import EventKind
from tests.conftest import is_postgres, run_sql

executions: list[str] = []
seen: list[BreakerState] = []
DOWN = {"on": True}
POLICY = loom.CircuitBreaker(failures=3, window=60, reset_after=3600)


@loom.activity(retry=1, circuit_breaker=POLICY)  # no own timeout: waits while open
async def downstream(caller: str) -> str:
    executions.append(caller)
    # What the shared breaker said while this attempt ran (the probe runs half-open).
    breakers = {b.activity_name: b.state for b in await get_store().list_breakers()}
    seen.append(breakers.get("downstream", BreakerState.CLOSED))
    if DOWN["on"]:
        raise ConnectionError("downstream is down")
    return f"ok {caller}"


@loom.workflow(name="CallDownstream")
class CallDownstream(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
    @loom.step
    async def call(self, ctx):  # type: ignore[no-untyped-def]
        ctx.state.reply = await ctx.activity(downstream, ctx.input["caller"])


@pytest.fixture(autouse=True)
def _reset() -> None:
    executions.clear()
    seen.clear()
    DOWN["on"] = True


def query(db: Path | str, sql: str) -> list[tuple[Any, ...]]:
    if is_postgres(db):
        return [tuple(row) for row in run_sql(str(db), sql)[0]]
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return list(conn.execute(sql))


def execute(db: Path | str, *statements: str) -> None:
    if is_postgres(db):
        run_sql(str(db), *statements)
        return
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        for statement in statements:
            conn.execute(statement)


async def eventually(check: Any, what: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def breaker_state() -> Breaker | None:
    found = [b for b in await get_store().list_breakers() if b.activity_name == "downstream"]
    return found[0] if found else None


def deferred(db: Path | str) -> int:
    rows = query(db, "SELECT payload FROM tasks WHERE payload LIKE '%deferred_since%'")
    return len(rows)


def age_breaker(db: Path | str) -> None:
    """Let the open period pass now: the breaker opened an hour ago and its deferred calls
    are due (what an hour of waiting would do, without the hour)."""
    execute(
        db,
        "UPDATE circuit_breakers SET opened_at = opened_at - 3601000",
        "UPDATE tasks SET run_at = 0 WHERE payload LIKE '%deferred_since%'",
    )


async def start(prefix: str, count: int) -> list[loom.WorkflowHandle[Any]]:
    return [
        await CallDownstream.start({"caller": f"{prefix}{n}"}, workflow_id=f"{prefix}{n}")
        for n in range(count)
    ]


async def open_breaker(db_path: Path | str) -> Breaker:
    for handle in await start("a", 3):
        with pytest.raises(loom.LoomError):
            await handle.result(timeout=30)
    assert len(executions) == 3
    opened = await breaker_state()
    assert opened is not None and opened.state is BreakerState.OPEN
    assert opened.times_opened == 1
    return opened


async def test_opens_after_failures_runs_nothing_while_open_and_probe_closes(
    db_path, make_worker
) -> None:
    async with make_worker([CallDownstream], [downstream]):
        await open_breaker(db_path)
        waiting = await start("b", 4)

        async def all_deferred() -> bool:
            return deferred(db_path) == 4

        await eventually(all_deferred, "four deferred calls")
        assert len(executions) == 3  # open: nothing ran
        assert {await h.status() for h in waiting} == {loom.WorkflowStatus.RUNNING}

        DOWN["on"] = False
        age_breaker(db_path)
        states = [await h.result(timeout=30) for h in waiting]
        assert [s["reply"] for s in states] == [f"ok b{n}" for n in range(4)]
    # One probe, then (closed) the other three: none of the deferrals was an execution.
    assert len(executions) == 3 + 4
    assert seen[3:] == [BreakerState.HALF_OPEN] + [BreakerState.CLOSED] * 3
    closed = await breaker_state()
    assert closed is not None and closed.state is BreakerState.CLOSED
    # retry=1: a single attempt each, yet every call was deferred at least once and lived.
    logs = await get_store().list_logs(waiting[0].id)
    assert any("deferred: its circuit breaker is open" in message for _, _, message in logs)
    for handle in waiting:
        events = await get_store().list_events(handle.id)
        [done] = [e for e in events if e.kind is EventKind.ACTIVITY_COMPLETED]
        assert done.payload["attempt"] == 1


async def test_failed_probe_reopens_and_the_others_keep_waiting(db_path, make_worker) -> None:
    async with make_worker([CallDownstream], [downstream]):
        await open_breaker(db_path)
        waiting = await start("b", 3)

        async def all_deferred() -> bool:
            return deferred(db_path) == 3

        await eventually(all_deferred, "three deferred calls")
        age_breaker(db_path)  # still down: the probe fails

        async def reopened() -> Breaker | None:
            state = await breaker_state()
            return state if state and state.times_opened == 2 else None

        again = await eventually(reopened, "the breaker to open again")
        assert again.state is BreakerState.OPEN
        await eventually(all_deferred_two(db_path), "the two others deferred again")
        assert len(executions) == 3 + 1  # exactly one probe ran
        assert seen[3:] == [BreakerState.HALF_OPEN]
        statuses = [await h.status() for h in waiting]
        assert statuses.count(loom.WorkflowStatus.FAILED) == 1  # the probe (retry=1)
        assert statuses.count(loom.WorkflowStatus.RUNNING) == 2


def all_deferred_two(db_path: Path | str) -> Any:
    async def check() -> bool:
        rows = query(db_path, "SELECT run_at FROM tasks WHERE payload LIKE '%deferred_since%'")
        return len(rows) == 2 and all(int(r[0]) > time.time() * 1000 + 60_000 for r in rows)

    return check


async def test_reset_breaker_closes_it_and_runs_the_deferred_calls(db_path, make_worker) -> None:
    async with make_worker([CallDownstream], [downstream]):
        await open_breaker(db_path)
        waiting = await start("b", 2)

        async def all_deferred() -> bool:
            return deferred(db_path) == 2

        await eventually(all_deferred, "two deferred calls")
        DOWN["on"] = False
        assert await get_store().reset_breaker("downstream") is True
        assert await get_store().reset_breaker("nope") is False
        for handle in waiting:
            assert (await handle.result(timeout=30))["reply"].startswith("ok")
    assert len(executions) == 5


@loom.activity(retry=1, timeout=0.5, circuit_breaker=POLICY)
async def impatient(caller: str) -> str:
    executions.append(caller)
    raise ConnectionError("down")


@loom.workflow(name="CallImpatient")
class CallImpatient(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
    @loom.step
    async def call(self, ctx):  # type: ignore[no-untyped-def]
        ctx.state.reply = await ctx.activity(impatient, ctx.input["caller"])


async def test_open_period_is_bounded_by_the_calls_own_timeout(db_path, make_worker) -> None:
    async with make_worker([CallImpatient], [impatient]):
        for n in range(3):
            handle = await CallImpatient.start({"caller": "x"}, workflow_id=f"x{n}")
            with pytest.raises(loom.LoomError):
                await handle.result(timeout=30)
        late = await CallImpatient.start({"caller": "late"}, workflow_id="late")
        with pytest.raises(loom.LoomError) as failure:
            await late.result(timeout=30)
    assert "CircuitOpenError" in str(failure.value)
    assert "longer than the call's own timeout" in str(failure.value)
    assert executions == ["x", "x", "x"]  # the late call never ran


# -- the state machine on a fixed clock ------------------------------------------------------

P = loom.CircuitBreaker(failures=2, window=10, reset_after=5)
FAIL = BreakerResult("a", P, is_success=False)
OK = BreakerResult("a", P, is_success=True)
CALL = BreakerCall("a", P, hold_ms=1_000)


def test_failures_outside_the_window_do_not_count() -> None:
    b = Breaker("a").recorded(FAIL, 0).recorded(FAIL, 10_001)
    assert b.state is BreakerState.CLOSED
    assert b.recorded(FAIL, 10_002).state is BreakerState.OPEN
    assert Breaker("a").recorded(OK, 0) == Breaker("a")


def test_half_open_lets_one_probe_through_until_its_hold_ends() -> None:
    opened = Breaker("a").recorded(FAIL, 0).recorded(FAIL, 1)
    assert opened.admitted(CALL, "t1", 4_000) == (opened, 5_001)
    probing, retry_at = opened.admitted(CALL, "t1", 5_001)
    assert retry_at is None and probing.state is BreakerState.HALF_OPEN
    _, other = probing.admitted(CALL, "t2", 5_100)
    assert other is not None and other > 5_100  # a second caller waits
    assert probing.admitted(CALL, "t1", 5_200)[1] is None  # the probe's own re-claim runs
    taken_over, after_hold = probing.admitted(CALL, "t2", 6_002)  # the probe's worker died
    assert after_hold is None and taken_over.probe_key == "t2"
    assert probing.recorded(OK, 5_500).state is BreakerState.CLOSED
    reopened = probing.recorded(FAIL, 5_500)
    assert reopened.state is BreakerState.OPEN and reopened.opened_at == 5_500
    assert reopened.times_opened == 2


def test_policy_is_validated() -> None:
    with pytest.raises(ValueError, match="failures must be >= 1"):
        loom.CircuitBreaker(failures=0)
    with pytest.raises(ValueError, match="reset_after must be > 0"):
        loom.CircuitBreaker(reset_after=0)
    with pytest.raises(TypeError, match=r"circuit_breaker must be a loom\.CircuitBreaker"):
        loom.activity(circuit_breaker={"failures": 3})  # type: ignore[arg-type]


async def test_manifest_breaker_guards_a_webassembly_activity(db_path, make_worker, tmp_path):
    from activity_registry import Registry
    from tests.activity_registry.activity_files import SPIN_WAT, write_activity
    from tests.loom.test_wasm_activities import CallTwice

    extra = (
        "[limits]\ntimeout_ms = 50\n[retry]\nmax_attempts = 2\ninitial_interval_ms = 10\n"
        "[circuit_breaker]\nfailures = 2\nwindow_ms = 60000\nreset_after_ms = 3600000\n"
    )
    async with Registry(db_path) as registry:
        await registry.register(write_activity(tmp_path, name="spin", wat=SPIN_WAT, extra=extra))
    async with make_worker([CallTwice]):
        first = await CallTwice.start({"spec": "spin@1.0.0"})
        with pytest.raises(loom.ActivityFailedError):
            await first.result(timeout=30)  # two timed-out attempts: the breaker opens
        [opened] = await get_store().list_breakers()
        assert (opened.activity_name, opened.state) == ("spin", BreakerState.OPEN)
        second = await CallTwice.start({"spec": "spin@^1"})

        async def is_deferred() -> bool:
            return deferred(db_path) == 1

        await eventually(is_deferred, "the second call to be deferred")
        assert await second.status() is loom.WorkflowStatus.RUNNING
    events = await get_store().list_events(second.id)
    assert not [e for e in events if e.kind is EventKind.ACTIVITY_FAILED]
