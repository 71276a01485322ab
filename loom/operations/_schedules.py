"""Schedules: their rows and the firing that starts their workflows."""

from __future__ import annotations

from typing import Any

from loom._json import dumps, loads
from loom.cron import Catchup, Overlap, Schedule
from loom.dialect import Connection
from loom.exceptions import ScheduleNotFoundError
from loom.history import WorkflowStatus
from loom.operations._workflows import _insert_workflow
from loom.store import NewWorkflow

_SCHEDULE_COLUMNS = (
    "name, cron, timezone, workflow_name, app, input, overlap, catchup, is_paused, "
    "next_fire_at, last_fired_at, last_workflow_id, fired_count, skipped_count, created_at, "
    "updated_at"
)


def _schedule(row: Any) -> Schedule:
    return Schedule(
        name=row[0],
        cron=row[1],
        timezone=row[2],
        workflow_name=row[3],
        app=row[4],
        input=loads(row[5]),
        overlap=Overlap(row[6]),
        catchup=Catchup(row[7]),
        is_paused=bool(row[8]),
        next_fire_at=int(row[9]),
        last_fired_at=row[10],
        last_workflow_id=row[11],
        fired_count=int(row[12]),
        skipped_count=int(row[13]),
        created_at=int(row[14]),
        updated_at=int(row[15]),
    )


async def put_schedule(conn: Connection, schedule: Schedule, now: int) -> Schedule:
    """Create or replace a schedule by name; a replaced one keeps its counters and last run."""
    await conn.execute(
        f"INSERT INTO schedules ({_SCHEDULE_COLUMNS}) VALUES "
        "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, NULL, NULL, 0, 0, $11, $11) "
        "ON CONFLICT (name) DO UPDATE SET cron = excluded.cron, timezone = excluded.timezone, "
        "workflow_name = excluded.workflow_name, app = excluded.app, input = excluded.input, "
        "overlap = excluded.overlap, catchup = excluded.catchup, "
        "is_paused = excluded.is_paused, next_fire_at = excluded.next_fire_at, "
        "updated_at = excluded.updated_at",
        schedule.name,
        schedule.cron,
        schedule.timezone,
        schedule.workflow_name,
        schedule.app,
        dumps(schedule.input),
        schedule.overlap.value,
        schedule.catchup.value,
        int(schedule.is_paused),
        schedule.next_fire_at,
        now,
    )
    stored = await get_schedule(conn, schedule.name)
    assert stored is not None
    return stored


async def get_schedule(conn: Connection, name: str) -> Schedule | None:
    row = await conn.fetchrow(f"SELECT {_SCHEDULE_COLUMNS} FROM schedules WHERE name = $1", name)
    return _schedule(row) if row else None


async def list_schedules(conn: Connection) -> list[Schedule]:
    rows = await conn.fetch(f"SELECT {_SCHEDULE_COLUMNS} FROM schedules ORDER BY name")
    return [_schedule(row) for row in rows]


async def due_schedules(
    conn: Connection, workflow_names: list[str], now: int, limit: int
) -> list[Schedule]:
    rows = await conn.fetch(
        f"SELECT {_SCHEDULE_COLUMNS} FROM schedules WHERE next_fire_at <= $1 AND is_paused = 0 "
        f"AND {conn.dialect.any('workflow_name', 2)} ORDER BY next_fire_at LIMIT $3",
        now,
        workflow_names,
        limit,
    )
    return [_schedule(row) for row in rows]


async def set_schedule_paused(
    conn: Connection, name: str, is_paused: bool, next_fire_at: int | None, now: int
) -> Schedule:
    """Pause, or resume from `next_fire_at` (ticks missed while paused follow `catchup`)."""
    row = await conn.fetchrow(
        "UPDATE schedules SET is_paused = $1, next_fire_at = COALESCE($2, next_fire_at), "
        f"updated_at = $3 WHERE name = $4 RETURNING {_SCHEDULE_COLUMNS}",
        int(is_paused),
        next_fire_at,
        now,
        name,
    )
    if row is None:
        raise ScheduleNotFoundError(name)
    return _schedule(row)


async def delete_schedule(conn: Connection, name: str) -> None:
    if not await conn.execute("DELETE FROM schedules WHERE name = $1", name):
        raise ScheduleNotFoundError(name)


async def fire_schedule(
    conn: Connection,
    name: str,
    expected_next: int,
    next_fire_at: int,
    starts: list[NewWorkflow],
    skipped: int,
    now: int,
) -> list[str]:
    """Start the workflows of one pass over a due schedule and move it to its next tick.

    Compare-and-set on `next_fire_at`: of several workers firing the same tick, one finds
    the row still at `expected_next` and starts; the others start nothing. The ids derive
    from schedule + tick, so even a start repeated after a crash creates nothing twice.
    With `overlap=skip`, a tick whose predecessor is still open is skipped (and counted).
    Returns the ids of the workflows started.
    """
    row = await conn.fetchrow(
        "SELECT next_fire_at, is_paused, overlap, last_workflow_id FROM schedules "
        f"WHERE name = $1{conn.dialect.for_update}",
        name,
    )
    if row is None or int(row[0]) != expected_next or row[1]:
        return []
    last = row[3]
    started: list[str] = []
    for spec in starts:
        if row[2] == Overlap.SKIP.value and last is not None:
            status = await conn.fetchval(
                "SELECT status FROM workflows WHERE workflow_id = $1", last
            )
            if status is not None and not WorkflowStatus(status).is_closed:
                skipped += 1
                continue
        if await _insert_workflow(conn, spec, now):
            started.append(spec.workflow_id)
        last = spec.workflow_id
    await conn.execute(
        "UPDATE schedules SET next_fire_at = $1, last_fired_at = CASE WHEN $2 > 0 THEN $3 "
        "ELSE last_fired_at END, last_workflow_id = $4, fired_count = fired_count + $2, "
        "skipped_count = skipped_count + $5, updated_at = $3 WHERE name = $6",
        next_fire_at,
        len(started),
        now,
        last,
        skipped,
        name,
    )
    if started:
        await conn.notify_tasks()
    return started
