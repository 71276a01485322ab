"""loom.testing.WorkflowEnvironment through the `loom_env` fixture, as users write tests:
time skipping (timers, signal timeouts, retry backoffs, env.sleep), real time without it, and
activity test doubles standing in for native and WebAssembly activities."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import loom
import loom.testing
from loom.history import EventKind
from loom.testing import WorkflowEnvironment

DAY = timedelta(days=1)


@loom.activity
async def stamp(label: str) -> str:
    return f"stamped {label}"


@loom.workflow(name="EnvMonthly")
class Monthly(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
    """Two activities 30 days apart; records how long it slept by its own clock."""

    @loom.step
    async def run(self, ctx):  # type: ignore[no-untyped-def]
        ctx.state.first = await ctx.activity(stamp, "first")
        before = ctx.now()
        await ctx.sleep(timedelta(days=30))
        ctx.state.slept_days = (ctx.now() - before) / DAY
        ctx.state.second = await ctx.activity(stamp, "second")


@loom.workflow(name="EnvApproval")
class Approval(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
    """Waits a week for approval, then gives up."""

    @loom.step
    async def wait(self, ctx):  # type: ignore[no-untyped-def]
        try:
            decision = await ctx.wait_for_signal("approve", timeout=timedelta(days=7))
        except TimeoutError:
            ctx.state.outcome = "expired"
        else:
            ctx.state.outcome = f"approved by {decision['by']}"
        ctx.state.decided_at = ctx.now().isoformat()


@loom.workflow(name="EnvTicker")
class Ticker(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
    @loom.step
    async def tick(self, ctx):  # type: ignore[no-untyped-def]
        ctx.state.ticks = []
        for _ in range(3):
            await ctx.sleep(DAY)
            ctx.state.ticks = [*ctx.state.ticks, ctx.now().isoformat()]


_flaky_calls: list[int] = []


@loom.activity(retry=4, initial_interval=3600.0, max_interval=86_400.0)  # 1 h, 2 h, 4 h
async def flaky(label: str) -> str:
    _flaky_calls.append(len(_flaky_calls))
    if len(_flaky_calls) < 4:
        raise ConnectionError(f"attempt {len(_flaky_calls)} of {label} failed")
    return f"{label} after {len(_flaky_calls)} attempts"


@loom.workflow(name="EnvRetrying")
class Retrying(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
    @loom.step
    async def call(self, ctx):  # type: ignore[no-untyped-def]
        ctx.state.result = await ctx.activity(flaky, "sync")


@pytest.mark.loom(workflows=[Monthly], activities=[stamp])
async def test_thirty_day_sleep_between_two_activities_takes_no_time(loom_env) -> None:
    started_at = loom_env.now()
    began = time.monotonic()
    handle = await loom_env.start(Monthly, {})
    state = await handle.result(timeout=30)
    wall = time.monotonic() - began
    assert state == {"first": "stamped first", "slept_days": pytest.approx(30, abs=1e-3),
                     "second": "stamped second"}  # fmt: skip
    assert loom_env.now() - started_at >= timedelta(days=30)
    assert wall < 1.0, f"a skipped 30-day sleep took {wall:.2f}s of wall time"


@pytest.mark.loom(workflows=[Approval])
async def test_seven_day_signal_timeout_expires_at_exactly_seven_days(loom_env) -> None:
    started_at = loom_env.now()
    handle = await loom_env.start(Approval, {})
    state = await handle.result(timeout=30)
    assert state["outcome"] == "expired"
    events = await _events(loom_env, handle.id)
    (wait,) = [e for e in events if e.kind is EventKind.SIGNAL_WAIT_STARTED]
    (fired,) = [e for e in events if e.kind is EventKind.TIMER_FIRED]
    # The due time is the workflow's clock plus exactly 7 days, and the jump lands on it.
    due = wait.payload["fire_at"]
    assert due - started_at.timestamp() * 1000 == pytest.approx(7 * 86_400_000, abs=60_000)
    assert 0 <= fired.created_at - due < 60_000


@pytest.mark.loom(workflows=[Approval])
async def test_signal_sent_during_env_sleep_beats_the_timeout(loom_env) -> None:
    handle = await loom_env.start(Approval, {})
    await loom_env.sleep(timedelta(days=6))  # still waiting: nothing is due before day 7
    assert await handle.status() is loom.WorkflowStatus.RUNNING
    await handle.signal("approve", by="Ada")
    state = await handle.result(timeout=30)
    assert state["outcome"] == "approved by Ada"


@pytest.mark.loom(workflows=[Ticker])
async def test_env_sleep_fires_timers_in_order_and_stops_at_its_end(loom_env) -> None:
    started_at = loom_env.now()
    handle = await loom_env.start(Ticker, {})
    await loom_env.sleep(DAY + timedelta(hours=1))
    assert len((await handle.state())["ticks"]) == 1
    assert loom_env.now() - started_at >= DAY + timedelta(hours=1)
    assert loom_env.now() - started_at < DAY + timedelta(hours=1, minutes=1)
    await loom_env.sleep(DAY)
    assert len((await handle.state())["ticks"]) == 2
    state = await handle.result(timeout=30)
    assert len(state["ticks"]) == 3


@pytest.mark.loom(workflows=[Retrying], activities=[flaky])
async def test_retry_backoff_of_hours_is_skipped(loom_env) -> None:
    _flaky_calls.clear()
    started_at = loom_env.now()
    handle = await loom_env.start(Retrying, {})
    state = await handle.result(timeout=30)
    assert state == {"result": "sync after 4 attempts"}
    # Backoffs of about 1 + 2 + 4 hours (±20% jitter) passed on the virtual clock.
    assert loom_env.now() - started_at >= timedelta(hours=7 * 0.8)


@pytest.mark.loom(workflows=[Ticker], time_skipping=False)
async def test_without_time_skipping_real_time_passes(loom_env) -> None:
    started_at = loom_env.now()
    began = time.monotonic()
    await loom_env.sleep(0.3)
    assert time.monotonic() - began >= 0.3
    assert loom_env.now() - started_at >= timedelta(seconds=0.3)
    handle = await loom_env.start(Ticker, {})
    await loom_env.sleep(0.5)
    # A day-long timer is a day long: nothing fired in half a second.
    assert (await handle.state())["ticks"] == []
    assert await handle.status() is loom.WorkflowStatus.RUNNING


async def test_unmarked_env_serves_any_started_workflow_and_declared_activity(loom_env) -> None:
    handle = await loom_env.start(Monthly, {})
    state = await handle.result(timeout=30)
    assert state["second"] == "stamped second"


@loom.workflow(name="EnvRenewal")
class Renewal(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
    """A parent whose children each sleep a different number of days."""

    @loom.step
    async def renew(self, ctx):  # type: ignore[no-untyped-def]
        children = [ctx.start_workflow(Monthly, {}) for _ in range(2)]
        ctx.state.children = [(await child)["slept_days"] for child in children]
        await ctx.sleep(timedelta(days=365))
        ctx.state.renewed_on = ctx.now().isoformat()


@pytest.mark.loom(workflows=[Renewal, Monthly], activities=[stamp])
async def test_children_and_concurrent_results_skip_together(loom_env) -> None:
    started_at = loom_env.now()
    first, second = [await loom_env.start(Renewal, {}) for _ in range(2)]
    one, two = await asyncio.gather(first.result(timeout=60), second.result(timeout=60))
    for state in (one, two):
        assert state["children"] == [pytest.approx(30, abs=1e-3)] * 2
    # 30 days for the children, then a year: the clock passed both, and not much more.
    elapsed = loom_env.now() - started_at
    assert timedelta(days=395) <= elapsed < timedelta(days=395, hours=1)


# -- activity test doubles ------------------------------------------------------------


@loom.workflow(name="EnvSummarize")
class Summarize(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
    """Calls a registered WebAssembly activity by name and range, and a native one."""

    @loom.step
    async def run(self, ctx):  # type: ignore[no-untyped-def]
        answer = await ctx.activity(
            "llm-chat@^1", {"messages": [{"role": "user", "content": "hi"}]}
        )
        ctx.state.summary = answer["content"]
        ctx.state.stamp = await ctx.activity(stamp, "done")


def fake_chat(request: dict[str, Any]) -> dict[str, Any]:
    return {"content": f"echo: {request['messages'][-1]['content']}", "model": "fake"}


async def fake_stamp(label: str) -> str:
    return f"fake stamp {label}"


@pytest.mark.loom(workflows=[Summarize], activities=[stamp], doubles={"llm-chat": fake_chat})
async def test_wasm_activity_replaced_by_a_python_double(loom_env) -> None:
    handle = await loom_env.start(Summarize, {})
    state = await handle.result(timeout=30)
    assert state == {"summary": "echo: hi", "stamp": "stamped done"}
    completed = [
        e.payload for e in await _events(loom_env, handle.id)
        if e.kind is EventKind.ACTIVITY_COMPLETED
    ]  # fmt: skip
    assert completed[0]["name"] == "llm-chat@^1"
    assert completed[0]["result"] == {"content": "echo: hi", "model": "fake"}


@pytest.mark.loom(
    workflows=[Summarize],
    activities=[stamp],
    doubles={"llm-chat": fake_chat, "stamp": fake_stamp},
)
async def test_native_activity_replaced_by_a_double_with_its_arguments(loom_env) -> None:
    handle = await loom_env.start(Summarize, {})
    state = await handle.result(timeout=30)
    assert state["stamp"] == "fake stamp done"


@pytest.mark.loom(workflows=[Summarize], activities=[stamp])
async def test_without_a_double_the_unregistered_module_suspends_the_workflow(loom_env) -> None:
    """Registering the module (or a double) can fix it, so the workflow is parked, not
    failed: SUSPENDED with the registry's error kept."""
    handle = await loom_env.start(Summarize, {})
    for _ in range(600):
        if await handle.status() is loom.WorkflowStatus.SUSPENDED:
            break
        await asyncio.sleep(0.05)
    info = await handle.info()
    assert info["status"] is loom.WorkflowStatus.SUSPENDED
    assert info["error"]["type"] == "ActivityNotFoundError"
    assert "llm-chat" in info["error"]["message"]


async def test_environment_without_the_fixture_cleans_up_its_database() -> None:
    async with WorkflowEnvironment(workflows=[Monthly], activities=[stamp]) as env:
        database = env.database
        state = await (await env.start(Monthly, {})).result(timeout=30)
        assert state["second"] == "stamped second"
    assert not await asyncio.to_thread(Path(database).exists)


async def test_time_skipping_on_either_store(any_db: Path | str) -> None:
    """The skipper reads the task queue through the store, so PostgreSQL skips as SQLite."""
    async with WorkflowEnvironment(workflows=[Monthly], activities=[stamp], database=any_db) as env:
        began = time.monotonic()
        state = await (await env.start(Monthly, {})).result(timeout=30)
    assert state["slept_days"] == pytest.approx(30, abs=1e-3)
    assert time.monotonic() - began < 5.0


async def _events(env: WorkflowEnvironment, workflow_id: str) -> list[Any]:
    return await loom.client.get_store(env.database).list_events(workflow_id)


def test_testing_all_is_frozen() -> None:
    assert loom.testing.__all__ == ["VirtualClock", "WorkflowEnvironment", "replay"]
    assert all(getattr(loom.testing, name).__doc__ for name in loom.testing.__all__)
