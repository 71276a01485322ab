"""Workflows parked in numbers (issue 16): runs evicted from a small cache resume correctly
when woken, nothing per workflow outlives its completion (nor waits for the cyclic garbage
collector to free it), and a burst of starts holds a
bounded number of live runs at once."""

from __future__ import annotations

import asyncio
import gc
import random
import sys
from typing import Any

import pytest

import loom
import loom.worker._heap
import loom.worker._worker
from loom.client import _watchers, get_store
from loom.history import EventKind
from loom.worker._slots import Slots
from tests.loom.test_breaker import eventually


@loom.activity
async def reserve(item: int) -> int:
    return item + 1


@loom.workflow(name="ParkedDraw")
class ParkedDraw(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
    @loom.step
    async def run(self, ctx):  # type: ignore[no-untyped-def]
        ctx.state.item = await ctx.activity(reserve, ctx.input["n"])
        ctx.state.before = ctx.random()
        ctx.state.approval = await ctx.wait_for_signal("approve")
        ctx.state.after = ctx.random()


async def parked(count: int) -> bool:
    stats = await get_store().collect_stats()
    return stats.workflows["RUNNING"] == count and not any(stats.tasks.values())


async def test_evicted_parked_runs_resume_after_a_signal(db_path, make_worker) -> None:
    async with make_worker([ParkedDraw], [reserve], max_cached_workflows=2) as worker:
        handles = [await ParkedDraw.start({"n": n}) for n in range(6)]
        await eventually(lambda: parked(6), "all six parked on their signal")
        assert len(worker._cache) <= 2  # the other four were evicted while parked
        await asyncio.gather(*(h.signal("approve", {"n": i}) for i, h in enumerate(handles)))
        states = [await h.result(timeout=30) for h in handles]
    for n, (handle, state) in enumerate(zip(handles, states, strict=True)):
        assert state["item"] == n + 1
        assert state["approval"] == {"n": n}
        events = await get_store().list_events(handle.workflow_id)
        started = next(e for e in events if e.kind is EventKind.WORKFLOW_STARTED)
        stream = random.Random(int(started.payload["seed"]))  # the run's generator, replayed
        assert (state["before"], state["after"]) == (stream.random(), stream.random())


async def test_nothing_per_workflow_is_left_after_completion(db_path, make_worker) -> None:
    store = get_store()
    async with make_worker([ParkedDraw], [reserve]) as worker:
        handles = await asyncio.gather(*(ParkedDraw.start({"n": n}) for n in range(20)))
        waits = [asyncio.ensure_future(h.result(timeout=30)) for h in handles]
        await eventually(lambda: parked(20), "all twenty parked on their signal")

        async def registered() -> bool:  # one in-process wake-up per waiting handle
            return len(store.wakeups._closed) == 20

        await eventually(registered, "every handle waiting for its close")
        await asyncio.gather(*(h.signal("approve") for h in handles))
        await asyncio.gather(*waits)
        assert not worker._cache and not worker._advancing and not worker._inflight
        assert not store.wakeups._closed
        watcher = _watchers[(id(store), asyncio.get_running_loop())]
        assert not watcher._waiting


@pytest.mark.timeout(240)
async def test_the_tables_of_a_burst_of_waiters_are_let_go(db_path, make_worker) -> None:
    """Dicts never shrink as keys leave: the waiters' tables of 2,000 handles (~70 KiB
    each) would stay that size, empty, for good (megabytes at 100k)."""
    store = get_store()
    async with make_worker([ParkedDraw], [reserve]):
        handles = await asyncio.gather(*(ParkedDraw.start({"n": n}) for n in range(2000)))
        waits = [asyncio.ensure_future(h.result(timeout=180)) for h in handles]
        await eventually(lambda: parked(2000), "all parked on their signal", timeout=180)
        watcher = _watchers[(id(store), asyncio.get_running_loop())]
        full = sys.getsizeof(store.wakeups._closed), sys.getsizeof(watcher._waiting)
        await asyncio.gather(*(h.signal("approve") for h in handles))
        await asyncio.gather(*waits)

        async def let_go() -> bool:  # the watcher's poll ends at its next interval
            sizes = sys.getsizeof(store.wakeups._closed), sys.getsizeof(watcher._waiting)
            seen.append(sizes)
            return max(sizes) < 1024

        seen: list[tuple[int, int]] = []

        try:
            await eventually(let_go, "the waiters' tables back to empty ones", timeout=60)
        except AssertionError as err:
            raise AssertionError(f"{err}; (wakeups, watcher) sizes {seen[-1:]}") from None
    assert min(full) > 50_000


async def test_a_finished_run_is_freed_without_the_cycle_collector(db_path, make_worker) -> None:
    async with make_worker([ParkedDraw], [reserve], max_cached_workflows=2):
        gc.collect()
        gc.disable()
        try:
            handles = await asyncio.gather(*(ParkedDraw.start({"n": n}) for n in range(6)))
            await eventually(lambda: parked(6), "all six parked on their signal")
            # A dict payload becomes a tracked state value, which points back at its run.
            await asyncio.gather(*(h.signal("approve", {"n": 1}) for h in handles))
            await asyncio.gather(*(h.result(timeout=30) for h in handles))
            gc.set_debug(gc.DEBUG_SAVEALL)
            gc.collect()
            garbage = {type(o).__qualname__ for o in gc.garbage}
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
    # Evicted while parked, replayed, finished: each left through WorkflowRun.close.
    assert not garbage & {"WorkflowRun", "WorkflowContext", "StateProxy", "TrackedDict"}


async def test_a_burst_of_starts_holds_a_bounded_number_of_live_runs(
    db_path, make_worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loom.worker._worker, "MAX_STARTING", 3)  # read there
    store = get_store()
    committing = peak = calls = 0
    create_and_commit = store.create_and_commit

    async def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal committing, peak, calls
        committing += 1
        calls += 1
        peak = max(peak, committing)
        try:
            return await create_and_commit(*args, **kwargs)
        finally:
            committing -= 1

    monkeypatch.setattr(store, "create_and_commit", counted)
    async with make_worker([ParkedDraw], [reserve], concurrency=100):
        handles = await asyncio.gather(*(ParkedDraw.start({"n": n}) for n in range(30)))
        await eventually(lambda: parked(30), "all thirty parked on their signal")
        await asyncio.gather(*(h.signal("approve") for h in handles))
        states = await asyncio.gather(*(h.result(timeout=30) for h in handles))
    assert [s["item"] for s in states] == [n + 1 for n in range(30)]
    assert calls == 30  # every start waited for a slot and still started eagerly
    assert 1 < peak <= 3


async def test_start_slots_are_served_in_order_and_survive_cancelled_waiters() -> None:
    slots = Slots(2)
    order: list[int] = []
    release = asyncio.Event()

    async def hold(n: int) -> None:
        async with slots:
            order.append(n)
            await release.wait()

    tasks = [asyncio.ensure_future(hold(n)) for n in range(6)]
    await asyncio.sleep(0)
    assert order == [0, 1]  # two slots: the other four wait
    tasks[2].cancel()  # a waiter gone before its turn is skipped, its slot not lost
    await asyncio.sleep(0)
    release.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert order == [0, 1, 3, 4, 5]
    async with slots, slots:  # both slots are free again
        pass


async def test_a_slot_handed_to_a_waiter_cancelled_meanwhile_passes_on() -> None:
    slots = Slots(1)
    await slots.__aenter__()
    handed = asyncio.ensure_future(slots.__aenter__())
    later = asyncio.ensure_future(slots.__aenter__())
    await asyncio.sleep(0)
    await slots.__aexit__(None, None, None)  # the slot goes to `handed`'s future ...
    handed.cancel()  # ... whose task is cancelled before it resumes
    await asyncio.wait_for(later, timeout=5)  # the slot reached the next waiter
    assert handed.cancelled()


async def test_the_young_gc_threshold_follows_the_runs_held(
    db_path, make_worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loom.worker._heap, "GC_OBJECTS_PER_RUN", 10_000)  # 6 runs: 120k
    before = gc.get_threshold()
    async with make_worker([ParkedDraw], [reserve], lease_seconds=0.3):
        raised = gc.get_threshold()[0]
        handles = await asyncio.gather(*(ParkedDraw.start({"n": n}) for n in range(6)))
        await eventually(lambda: parked(6), "all six parked on their signal")
        assert gc.get_threshold()[0] >= 100_000 > raised  # room for the runs cached
        await asyncio.gather(*(h.signal("approve") for h in handles))
        await asyncio.gather(*(h.result(timeout=30) for h in handles))

        async def back_down() -> bool:  # at the next heartbeat, once the cache drained
            return gc.get_threshold()[0] == raised

        await eventually(back_down, "the threshold back where the worker set it")
    assert gc.get_threshold() == before
