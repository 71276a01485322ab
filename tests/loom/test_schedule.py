"""Schedules: one start per tick whatever the number of workers, daylight-saving changes in
the schedule's zone, pause/resume/delete/trigger, and the overlap and catch-up policies."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import pytest

import loom
from loom.client import get_store
from loom.cron import Catchup, Overlap, Schedule, next_tick, plan, tick_workflow_id, ticks
from tests.loom.test_breaker import eventually, execute, query


@loom.workflow(name="Ping")
class Ping(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
    @loom.step
    async def ping(self, ctx):  # type: ignore[no-untyped-def]
        ctx.state.said = ctx.input["say"]


@loom.workflow(name="Hold")
class Hold(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
    @loom.step
    async def hold(self, ctx):  # type: ignore[no-untyped-def]
        await ctx.wait_for_signal("done")


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


def utc(at: int) -> str:
    return datetime.fromtimestamp(at / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M")


# -- cron arithmetic on a fixed clock --------------------------------------------------------


def test_berlin_0230_fires_once_on_the_2026_autumn_change() -> None:
    # 25 Oct 2026: clocks go back from 03:00 CEST to 02:00 CET, so 02:30 happens twice.
    after = ms("2026-10-24T12:00:00+00:00")
    firsts = list(zip(range(3), ticks("30 2 * * *", "Europe/Berlin", after), strict=False))
    assert [utc(t) for _, t in firsts] == [
        "2026-10-25 00:30",  # 02:30 CEST, once: not again at 02:30 CET an hour later
        "2026-10-26 01:30",
        "2026-10-27 01:30",
    ]
    record = _record("30 2 * * *", "Europe/Berlin", Catchup.ALL, next_fire_at=firsts[0][1])
    fired = plan(record, ms("2026-10-25T03:00:00+00:00"))  # after both 02:30s had passed
    assert [utc(t) for t in fired.starts] == ["2026-10-25 00:30"]
    assert utc(fired.next_fire_at) == "2026-10-26 01:30"


def test_spring_change_skips_nothing_and_repeats_nothing() -> None:
    # 29 Mar 2026: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist that day.
    after = ms("2026-03-28T12:00:00+00:00")
    first, second = list(zip(range(2), ticks("30 2 * * *", "Europe/Berlin", after), strict=False))
    assert utc(first[1]) == "2026-03-29 01:00"  # 03:00 CEST, the first moment after 02:30
    assert utc(second[1]) == "2026-03-30 00:30"


def _record(cron: str, tz: str, catchup: Catchup, *, next_fire_at: int) -> Schedule:
    return Schedule(
        name="s",
        cron=cron,
        timezone=tz,
        workflow_name="Ping",
        input={},
        overlap=Overlap.ALLOW,
        catchup=catchup,
        is_paused=False,
        next_fire_at=next_fire_at,
    )


@pytest.mark.parametrize(
    ("catchup", "started"),
    [(Catchup.ALL, ["10:00", "10:05", "10:10"]), (Catchup.ONE, ["10:10"]), (Catchup.NONE, [])],
)
def test_catchup_policies(catchup: Catchup, started: list[str]) -> None:
    first = ms("2026-06-01T10:00:00+00:00")
    now = ms("2026-06-01T10:14:00+00:00")  # three ticks missed, the latest 4 minutes late
    fired = plan(_record("*/5 * * * *", "UTC", catchup, next_fire_at=first), now)
    assert [utc(t)[-5:] for t in fired.starts] == started
    assert fired.skipped == 3 - len(started)
    assert utc(fired.next_fire_at) == "2026-06-01 10:15"


def test_catchup_none_still_fires_a_tick_that_is_on_time() -> None:
    first = ms("2026-06-01T10:00:00+00:00")
    fired = plan(_record("*/5 * * * *", "UTC", Catchup.NONE, next_fire_at=first), first + 900)
    assert fired.starts == (first,)


def test_tick_ids_derive_from_schedule_and_tick() -> None:
    assert tick_workflow_id("nightly", ms("2026-10-25T00:30:00+00:00")) == (
        "nightly@2026-10-25T00:30:00Z"
    )


async def test_bad_definitions_are_clear_errors_and_write_nothing(db_path) -> None:
    with pytest.raises(loom.ScheduleError, match=r"invalid cron expression '61 \* \* \* \*'"):
        await loom.schedule("bad", workflow=Ping, cron="61 * * * *", input={"say": "x"})
    with pytest.raises(loom.ScheduleError, match=r"unknown time zone .Mars/Olympus."):
        await loom.schedule("bad", workflow=Ping, cron="* * * * *", timezone="Mars/Olympus")
    with pytest.raises(loom.ScheduleError, match=r"overlap must be one of skip\|allow"):
        await loom.schedule("bad", workflow=Ping, cron="* * * * *", overlap="never")
    assert await loom.list_schedules() == []
    with pytest.raises(loom.ScheduleNotFoundError, match="schedule 'nope' not found"):
        await loom.get_schedule("nope")


# -- workers firing schedules through the store ----------------------------------------------


def age(db_path: Any, name: str, cron: str, seconds: int) -> int:
    """Pretend the schedule was last looked at `seconds` ago: its next tick is in the past."""
    first = next_tick(cron, "UTC", int(time.time() * 1000) - seconds * 1000)
    execute(db_path, f"UPDATE schedules SET next_fire_at = {first} WHERE name = '{name}'")
    return first


def started_ids(db_path: Any, prefix: str) -> list[str]:
    rows = query(db_path, f"SELECT workflow_id FROM workflows WHERE workflow_id LIKE '{prefix}@%'")
    return sorted(str(r[0]) for r in rows)


async def test_two_workers_start_each_tick_once(db_path, make_worker) -> None:
    cron = "* * * * * *"  # every second
    await loom.schedule(
        "tick", workflow=Ping, cron=cron, input={"say": "hi"}, catchup="all", overlap="allow"
    )
    first = age(db_path, "tick", cron, 30)
    async with (
        make_worker([Ping], schedule_interval=0.05),
        make_worker([Ping], schedule_interval=0.05),
    ):

        async def caught_up() -> bool:
            record = await get_store().get_schedule("tick")
            return record is not None and record.next_fire_at > first + 31_000

        await eventually(caught_up, "the schedule to catch up")
        handle = await loom.get_schedule("tick")
        await handle.pause()
    ids = started_ids(db_path, "tick")
    record = await handle.describe()
    assert len(ids) == len(set(ids)) == record.fired_count >= 31
    expected = [tick_workflow_id("tick", first + 1000 * n) for n in range(len(ids))]
    assert ids == sorted(expected)  # every tick once, none twice, none missing


async def test_paused_schedule_starts_nothing_and_resume_catches_up_one(
    db_path, make_worker
) -> None:
    cron = "* * * * * *"
    await loom.schedule(
        "live", workflow=Ping, cron=cron, input={"say": "a"}, catchup="all", overlap="allow"
    )
    paused = await loom.schedule(
        "still", workflow=Ping, cron=cron, input={"say": "b"}, paused=True, catchup="one"
    )
    age(db_path, "live", cron, 5)
    age(db_path, "still", cron, 5)
    async with make_worker([Ping], schedule_interval=0.05):

        async def live_fired() -> bool:
            record = await get_store().get_schedule("live")
            return record is not None and record.fired_count >= 5

        await eventually(live_fired, "the live schedule to fire")
        assert started_ids(db_path, "still") == []
        assert (await paused.describe()).is_paused
        await paused.resume()

        async def resumed() -> bool:
            return bool(started_ids(db_path, "still"))

        await eventually(resumed, "the resumed schedule to fire")
    assert (await paused.describe()).fired_count >= 1


async def test_overlap_skip_starts_nothing_while_the_last_run_is_open(db_path, make_worker) -> None:
    cron = "* * * * * *"
    holding = await loom.schedule("hold", workflow=Hold, cron=cron, catchup="all", input={})
    age(db_path, "hold", cron, 6)
    async with make_worker([Hold], schedule_interval=0.05):

        async def skipped() -> bool:
            return (await holding.describe()).skipped_count >= 5

        await eventually(skipped, "ticks to be skipped")
        [first] = started_ids(db_path, "hold")
        await loom.get_handle(first).signal("done")
        await loom.get_handle(first).result(timeout=30)

        async def next_one() -> bool:
            return len(started_ids(db_path, "hold")) >= 2

        await eventually(next_one, "the next tick after the run closed")
        await holding.pause()
    record = await holding.describe()
    assert record.overlap is Overlap.SKIP
    statuses = await get_store().get_statuses(started_ids(db_path, "hold"))
    open_runs = [w for w, s in statuses.items() if not s.is_closed]
    assert len(open_runs) <= 1


@pytest.mark.parametrize(("catchup", "count"), [("all", 4), ("one", 1), ("none", 0)])
async def test_catchup_after_missed_ticks(db_path, make_worker, catchup, count) -> None:
    cron = "0 0 1 1 *"  # every New Year: the latest tick is months old
    handle = await loom.schedule(
        "yearly", workflow=Ping, cron=cron, catchup=catchup, overlap="allow", input={"say": "y"}
    )
    first = next_tick(cron, "UTC", int(time.time() * 1000) - 4 * 366 * 86_400_000)
    execute(db_path, f"UPDATE schedules SET next_fire_at = {first} WHERE name = 'yearly'")
    async with make_worker([Ping], schedule_interval=0.05):

        async def moved() -> bool:
            return (await handle.describe()).next_fire_at > time.time() * 1000

        await eventually(moved, "the schedule to move past now")
    ids = started_ids(db_path, "yearly")
    assert len(ids) == count
    if catchup == "one":
        latest = max(t for _, t in zip(range(4), ticks(cron, "UTC", first - 1), strict=False))
        assert ids == [tick_workflow_id("yearly", latest)]


async def test_trigger_and_delete(db_path, make_worker) -> None:
    handle = await loom.schedule(
        "manual", workflow=Ping, cron="0 0 1 1 *", input={"say": "now"}, paused=True
    )
    async with make_worker([Ping]):
        workflow_id = await handle.trigger()
        state = await loom.get_handle(workflow_id).result(timeout=30)
    assert workflow_id.startswith("manual@") and state == {"said": "now"}
    [listed] = await loom.list_schedules()
    assert listed.name == "manual" and listed.workflow_name == "Ping"
    await handle.delete()
    assert await loom.list_schedules() == []
    with pytest.raises(loom.ScheduleNotFoundError):
        await handle.delete()
