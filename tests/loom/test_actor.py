"""Durable actors on both stores: sends and asks, state across messages, handler errors,
per-key ordering without overlap, compaction into snapshots, messages between actors and
from workflows. Each worker scenario also runs with a zero-size cache (cold replay)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest

import loom
from loom.client import get_store
from loom.history import EventKind
from loom.mailbox import actor_id

CACHE_SIZES = [pytest.param(10_000, id="cached"), pytest.param(0, id="replay-always")]


@dataclass
class Counter:
    total: int = 0
    count: int = 0
    seen: list[int] = field(default_factory=list)


running: dict[str, int] = {}
overlaps: list[str] = []


@loom.activity(retry=1, timeout=5)
async def slow_double(value: int) -> int:
    await asyncio.sleep(0)
    return value * 2


@loom.actor(name="Tally", snapshot_every=10)
class Tally(loom.Actor[Counter]):
    """Adds numbers; `add_slow` goes through an activity so handlers really suspend."""

    @loom.handler
    async def add(self, ctx: loom.WorkflowContext[Any, Counter], payload: int) -> int:
        ctx.state.total += payload
        ctx.state.count += 1
        return int(ctx.state.total)

    @loom.handler
    async def add_slow(self, ctx: loom.WorkflowContext[Any, Counter], payload: int) -> int:
        key = ctx.workflow_id
        if not ctx.is_replaying:
            running[key] = running.get(key, 0) + 1
            if running[key] > 1:
                overlaps.append(key)
        doubled = await ctx.activity(slow_double, payload)
        if not ctx.is_replaying:
            running[key] -= 1
        ctx.state.total += doubled // 2
        ctx.state.count += 1
        ctx.state.seen = [*ctx.state.seen, payload][-5:]
        return int(ctx.state.total)

    @loom.handler
    async def total(self, ctx: loom.WorkflowContext[Any, Counter], payload: None) -> int:
        return int(ctx.state.total)

    @loom.handler
    async def boom(self, ctx: loom.WorkflowContext[Any, Counter], payload: str) -> None:
        ctx.state.count += 1
        raise ValueError(f"boom: {payload}")


@loom.actor(name="Relay")
class Relay(loom.Actor[dict[str, Any]]):
    """Forwards to a Tally with ctx.send and asks one with ctx.ask."""

    @loom.handler
    async def forward(self, ctx: loom.WorkflowContext[Any, Any], payload: dict[str, Any]) -> None:
        ctx.send(Tally, payload["key"], "add", payload["value"])

    @loom.handler
    async def relay_ask(self, ctx: loom.WorkflowContext[Any, Any], payload: dict[str, Any]) -> Any:
        try:
            return await ctx.ask(Tally, payload["key"], payload["handler"], payload["value"])
        except loom.ActorHandlerError as err:
            return {"error": err.error_type, "message": err.error_message}


@loom.workflow(name="AsksTally")
class AsksTally(loom.Workflow[dict[str, Any], dict[str, Any]]):
    @loom.step
    async def go(self, ctx: loom.WorkflowContext[dict[str, Any], dict[str, Any]]) -> None:
        ctx.send(Tally, ctx.input["key"], "add", 5)
        ctx.state["total"] = await ctx.ask(Tally, ctx.input["key"], "add", 1)


APP = [Tally, Relay, AsksTally]


@pytest.mark.parametrize("cache", CACHE_SIZES)
async def test_sum_of_sends_equals_ask_total(worker: Any, cache: int) -> None:
    async with worker(APP, [slow_double], max_cached_workflows=cache):
        for value in range(1, 31):
            await loom.send(Tally, "a", "add", value)
        assert await loom.ask(Tally, "a", "total", timeout=60) == sum(range(1, 31))
        assert await loom.ask(Tally, "a", "add", 1, timeout=60) == sum(range(1, 31)) + 1


async def test_an_actor_created_for_an_owner_shows_in_its_progress(worker: Any) -> None:
    async with worker(APP, [slow_double]):
        await loom.send(Tally, "mine", "add", 2, owner="ann")
        await loom.send(Tally, "mine", "add", 3, owner="bob")  # exists: its owner stays
        assert await loom.ask(Tally, "mine", "total", timeout=60) == 5
        progress = await loom.get_progress("ann")
        [row] = [w for w in progress["workflows"] if w["workflow_id"] == actor_id(Tally, "mine")]
        assert row["status"] == "RUNNING"
        assert not [
            w
            for w in (await loom.get_progress("bob"))["workflows"]
            if w["workflow_id"] == actor_id(Tally, "mine")
        ]


async def test_two_keys_are_independent(worker: Any) -> None:
    async with worker(APP, [slow_double]):
        await asyncio.gather(
            *(loom.send(Tally, key, "add", n) for n in range(1, 11) for key in ("x", "y"))
        )
        await loom.send(Tally, "y", "add", 100)
        assert await loom.ask(Tally, "x", "total", timeout=60) == 55
        assert await loom.ask(Tally, "y", "total", timeout=60) == 155


@pytest.mark.parametrize("cache", CACHE_SIZES)
async def test_one_message_at_a_time_in_arrival_order(worker: Any, cache: int) -> None:
    overlaps.clear()
    async with worker(APP, [slow_double], max_cached_workflows=cache, concurrency=20):
        for value in range(1, 16):
            await loom.send(Tally, "slow", "add_slow", value)
        assert await loom.ask(Tally, "slow", "total", timeout=60) == sum(range(1, 16))
    assert overlaps == []
    record = await get_store().get_workflow(actor_id(Tally, "slow"))
    assert record is not None
    assert record.state["seen"] == [11, 12, 13, 14, 15]  # arrival order, after compaction


async def test_handler_error_reaches_ask_and_actor_survives(worker: Any) -> None:
    async with worker(APP, [slow_double]):
        await loom.send(Tally, "e", "add", 2)
        with pytest.raises(loom.ActorHandlerError) as caught:
            await loom.ask(Tally, "e", "boom", "bad input", timeout=60)
        assert caught.value.error_type == "ValueError"
        assert "boom: bad input" in str(caught.value)
        assert await loom.ask(Tally, "e", "add", 3, timeout=60) == 5
        with pytest.raises(loom.ActorHandlerError, match="no handler 'nope'"):
            await loom.ask("Tally", "e", "nope", timeout=60)
        record = await get_store().get_workflow(actor_id(Tally, "e"))
        assert record is not None and record.status is loom.WorkflowStatus.RUNNING
        assert record.state["count"] == 3  # the failed handler's change is kept


async def test_bad_input_is_refused_before_anything_is_written(worker: Any) -> None:
    with pytest.raises(ValueError, match="no handler 'nope'"):
        await loom.send(Tally, "k", "nope", 1)
    with pytest.raises(ValueError, match="non-empty string"):
        await loom.send(Tally, "", "add", 1)
    with pytest.raises(TypeError, match="JSON"):
        await loom.send(Tally, "k", "add", object())
    assert await get_store().list_actors() == []


async def test_ask_times_out_without_a_worker(db_path: Any) -> None:
    with pytest.raises(TimeoutError):
        await loom.ask(Tally, "idle", "total", timeout=0.2)
    records = await get_store().list_actors()
    assert [r.workflow_id for r in records] == [actor_id(Tally, "idle")]


@pytest.mark.parametrize("cache", CACHE_SIZES)
async def test_compaction_bounds_history_and_keeps_state(worker: Any, cache: int) -> None:
    store = get_store()
    async with worker(APP, [slow_double], max_cached_workflows=cache):
        for value in range(1, 56):
            await loom.send(Tally, "c", "add", value)
        assert await loom.ask(Tally, "c", "total", timeout=60) == sum(range(1, 56))
    record = await store.get_workflow(actor_id(Tally, "c"))
    assert record is not None
    assert record.input["snapshots"] == 5 and record.input["handled"] == 50
    events = await store.list_events(actor_id(Tally, "c"))
    assert len(events) < 40  # 6 messages since the last snapshot, not 56
    assert events[0].kind is EventKind.WORKFLOW_STARTED
    assert events[0].payload["snapshot"]["total"] == sum(range(1, 51))
    # A cold start (a new worker, nothing cached) rebuilds the state from the snapshot.
    async with worker(APP, [slow_double], max_cached_workflows=0):
        assert await loom.ask(Tally, "c", "add", 0, timeout=60) == sum(range(1, 56))


async def test_messages_from_actors_and_workflows(worker: Any) -> None:
    async with worker(APP, [slow_double]):
        await loom.send(Relay, "r", "forward", {"key": "t", "value": 7})
        answer = await loom.ask(
            Relay, "r", "relay_ask", {"key": "t", "handler": "add", "value": 1}, timeout=60
        )
        assert answer == 8
        failed = await loom.ask(
            Relay, "r", "relay_ask", {"key": "t", "handler": "boom", "value": "x"}, timeout=60
        )
        assert failed["error"] == "ValueError"
        handle = await AsksTally.start({"key": "t"})
        state = await handle.result(timeout=60)
        assert state["total"] == 14
        events = await get_store().list_events(handle.workflow_id)
        assert [e.kind for e in events].count(EventKind.MESSAGE_SENT) == 2


@loom.actor(name="Big")
class Big(loom.Actor[Counter]):
    """The default compaction interval (1,000 messages)."""

    @loom.handler
    async def add(self, ctx: loom.WorkflowContext[Any, Counter], payload: int) -> int:
        ctx.state.total += payload
        ctx.state.count += 1
        return int(ctx.state.count)


@pytest.mark.timeout(300)
async def test_three_thousand_messages_compact_and_cold_start(worker: Any) -> None:
    store = get_store()
    async with worker([Big]):
        for value in range(3_000):
            await loom.send(Big, "big", "add", value)
        assert await loom.ask(Big, "big", "add", 0, timeout=240) == 3_001
    record = await store.get_workflow(actor_id(Big, "big"))
    assert record is not None and record.input["snapshots"] == 3
    events = await store.list_events(actor_id(Big, "big"))
    assert len(events) < 100  # the last snapshot and one message, not 3,001 messages
    async with worker([Big], max_cached_workflows=0):  # cold start: replay from the snapshot
        assert await loom.ask(Big, "big", "add", 1, timeout=120) == 3_002
    record = await store.get_workflow(actor_id(Big, "big"))
    assert record is not None and record.state["total"] == sum(range(3_000)) + 1
