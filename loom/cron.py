"""Schedules: the record the store keeps and the cron arithmetic that decides each tick.

Tick times come from `cronsim` in the schedule's own time zone, so a daylight-saving change
neither repeats nor drops a tick (02:30 Berlin on the autumn change fires once). Pure: no
store, no workers; `loom.scheduler` does the I/O.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from loom._json import JSON
from loom.exceptions import ScheduleError

MAX_STARTS_PER_FIRE = 100
"""At most this many missed ticks started in one transaction (`catchup=all` continues)."""
ON_TIME_MS = 60_000
"""With `catchup=none` a tick later than this is a missed tick, not a late one."""
MAX_TICKS_COUNTED = 1_000
"""Missed ticks counted per pass (`skipped_count`); a schedule down for years is not walked
tick by tick past this many."""


class Overlap(enum.StrEnum):
    """What a tick does while the workflow started by the previous tick is still open."""

    SKIP = "skip"
    ALLOW = "allow"


class Catchup(enum.StrEnum):
    """Which ticks missed while no worker ran (or the schedule was paused) are started."""

    NONE = "none"
    ONE = "one"
    ALL = "all"


@dataclass(frozen=True, slots=True)
class Schedule:
    """One schedule as `loom schedule list` shows it (times are unix ms on the store clock)."""

    name: str
    cron: str
    timezone: str
    workflow_name: str
    input: JSON
    overlap: Overlap
    catchup: Catchup
    is_paused: bool
    next_fire_at: int
    app: str | None = None
    last_fired_at: int | None = None
    last_workflow_id: str | None = None
    fired_count: int = 0
    skipped_count: int = 0
    created_at: int = 0
    updated_at: int = 0

    def to_json(self) -> dict[str, JSON]:
        return {
            "name": self.name,
            "cron": self.cron,
            "timezone": self.timezone,
            "workflow_name": self.workflow_name,
            "app": self.app,
            "input": self.input,
            "overlap": self.overlap.value,
            "catchup": self.catchup.value,
            "is_paused": self.is_paused,
            "next_fire_at": self.next_fire_at,
            "last_fired_at": self.last_fired_at,
            "last_workflow_id": self.last_workflow_id,
            "fired_count": self.fired_count,
            "skipped_count": self.skipped_count,
        }


def zone(timezone: str) -> ZoneInfo:
    """The IANA zone, or a ScheduleError naming it."""
    try:
        return ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as err:
        raise ScheduleError(
            f"unknown time zone {timezone!r}; use an IANA name such as 'Europe/Berlin' or 'UTC'"
        ) from err


def check_cron(cron: str, timezone: str = "UTC") -> None:
    """Raise ScheduleError naming `cron` when it is not a valid cron expression."""
    next(ticks(cron, timezone, 0), None)


def ticks(cron: str, timezone: str, after_ms: int, *, reverse: bool = False) -> Iterator[int]:
    """Tick times (unix ms) strictly after `after_ms` in order (`reverse`: at or before it,
    newest first)."""
    moment = after_ms + 1 if reverse else after_ms
    start = datetime.fromtimestamp(moment / 1000, tz=UTC).astimezone(zone(timezone))
    try:
        iterator = CronSim(cron, start, reverse=reverse)
    except (CronSimError, ValueError) as err:
        raise ScheduleError(
            f"invalid cron expression {cron!r}: {err}; expected 5 fields "
            "(minute hour day month weekday, e.g. '*/5 * * * *') or 6 with seconds first"
        ) from err
    for moment_at in iterator:
        at = int(moment_at.timestamp() * 1000)
        if (at <= after_ms) if reverse else (at > after_ms):
            yield at


def next_tick(cron: str, timezone: str, after_ms: int) -> int:
    return next(ticks(cron, timezone, after_ms))


@dataclass(frozen=True, slots=True)
class FirePlan:
    """What one pass over a due schedule does: the ticks to start and where it goes next."""

    starts: tuple[int, ...]
    skipped: int
    next_fire_at: int


def plan(schedule: Schedule, now: int) -> FirePlan:
    """The ticks due at `now` that the catch-up policy starts, and the next tick after them.

    Ticks are taken from `schedule.next_fire_at` on; `catchup=all` starts each (at most
    MAX_STARTS_PER_FIRE per pass, the next pass continues), `one` only the latest, `none`
    only the latest and only when it is at most ON_TIME_MS late. The work per pass is
    bounded whatever the time missed (a per-second cron paused for a month).
    """
    first, cron, tz = schedule.next_fire_at, schedule.cron, schedule.timezone
    if schedule.catchup is Catchup.ALL:
        due = [first]
        for at in ticks(cron, tz, first):
            if at > now or len(due) == MAX_STARTS_PER_FIRE:
                return FirePlan(tuple(due), 0, at)
            due.append(at)
    latest = next(ticks(cron, tz, now, reverse=True))
    later = itertools.takewhile(lambda t: t <= latest, ticks(cron, tz, first))
    missed = 1 + sum(1 for _ in itertools.islice(later, MAX_TICKS_COUNTED))
    starts: tuple[int, ...] = (latest,)
    if schedule.catchup is Catchup.NONE and now - latest > ON_TIME_MS:
        starts = ()
    return FirePlan(starts, missed - len(starts), next_tick(cron, tz, now))


def tick_workflow_id(name: str, tick_ms: int) -> str:
    """The id of the workflow a tick starts: one per schedule and tick, whoever fires it."""
    moment = datetime.fromtimestamp(tick_ms / 1000, tz=UTC)
    return f"{name}@{moment.strftime('%Y-%m-%dT%H:%M:%S')}Z"
