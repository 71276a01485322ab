"""Circuit breakers: admitting attempts, recording results and waking deferred calls."""

from __future__ import annotations

from typing import Any

from loom._json import dumps, loads
from loom.activation import ACTIVITY_TASK
from loom.breaker import Breaker, BreakerCall, BreakerResult, BreakerState, CircuitBreaker
from loom.dialect import Connection
from loom.store import Admission, ClaimedTask

DEFERRED_SINCE = "deferred_since"
"""Task payload key: when an open circuit breaker first deferred this call."""
DEFERRALS = "deferrals"
"""Task payload key: how often a breaker deferred this call (none of them was an attempt)."""


_BREAKER_COLUMNS = (
    "activity_name, state, failure_times, opened_at, probe_key, probe_until, times_opened, "
    "failures, window_ms, reset_after_ms, updated_at"
)


_BREAKER_UPDATE = (
    "failure_times = excluded.failure_times, opened_at = excluded.opened_at, "
    "probe_key = excluded.probe_key, probe_until = excluded.probe_until, "
    "times_opened = excluded.times_opened, failures = excluded.failures, "
    "window_ms = excluded.window_ms, reset_after_ms = excluded.reset_after_ms, "
    "updated_at = excluded.updated_at"
)


def _breaker(row: Any) -> Breaker:
    return Breaker(
        activity_name=row[0],
        state=BreakerState(row[1]),
        failure_times=tuple(int(t) for t in loads(row[2])),
        opened_at=row[3],
        probe_key=row[4],
        probe_until=row[5],
        times_opened=int(row[6]),
        policy=CircuitBreaker.from_ms(int(row[7]), int(row[8]), int(row[9])),
        updated_at=int(row[10]),
    )


async def _lock_breaker(conn: Connection, name: str) -> Breaker | None:
    row = await conn.fetchrow(
        f"SELECT {_BREAKER_COLUMNS} FROM circuit_breakers WHERE activity_name = $1"
        f"{conn.dialect.for_update}",
        name,
    )
    return _breaker(row) if row else None


async def _save_breaker(
    conn: Connection,
    breaker: Breaker,
    policy: CircuitBreaker,
    now: int,
    *,
    if_missing: bool = False,
) -> None:
    on_conflict = "DO NOTHING" if if_missing else "DO UPDATE SET state = excluded.state, "
    await conn.execute(
        f"INSERT INTO circuit_breakers ({_BREAKER_COLUMNS}) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) "
        f"ON CONFLICT (activity_name) {on_conflict}" + ("" if if_missing else _BREAKER_UPDATE),
        breaker.activity_name,
        breaker.state.value,
        dumps(list(breaker.failure_times)),
        breaker.opened_at,
        breaker.probe_key,
        breaker.probe_until,
        breaker.times_opened,
        policy.failures,
        policy.window_ms,
        policy.reset_after_ms,
        now,
    )


async def _record_breaker(conn: Connection, result: BreakerResult | None, now: int) -> None:
    """Apply an attempt's outcome to its breaker; callers run it after their fence held, in
    the transaction that records the attempt (lock order: workflow, task, then breaker)."""
    if result is None:
        return
    if not result.is_success:
        # Create the row first: FOR UPDATE locks no missing row, so two first failures
        # committing together on PostgreSQL would each count alone and one would be lost.
        await _save_breaker(
            conn, Breaker(result.activity_name), result.policy, now, if_missing=True
        )
    current = await _lock_breaker(conn, result.activity_name)
    if current is None:
        return  # a success, and a closed breaker that never failed needs no row
    after = current.recorded(result, now)
    if after != current or current.policy != result.policy:
        await _save_breaker(conn, after, result.policy, now)
    if current.state is not BreakerState.CLOSED and after.state is BreakerState.CLOSED:
        await _wake_deferred(conn, result.activity_name, now)


def _deferrals(task: ClaimedTask) -> int:
    count = task.payload.get(DEFERRALS)
    return count if isinstance(count, int) else 0


async def _wake_deferred(conn: Connection, name: str, now: int) -> None:
    """A breaker closed: the calls it deferred run now, not when they would have asked again.
    (Matched on the payload text: a similar name only makes some other task due early.)"""
    await conn.execute(
        "UPDATE tasks SET run_at = $1 WHERE kind = $2 AND lease_owner IS NULL AND run_at > $1 "
        "AND payload LIKE $3 AND (payload LIKE $4 OR payload LIKE $5)",
        now,
        ACTIVITY_TASK,
        f'%"{DEFERRED_SINCE}":%',
        f'%"name":{dumps(name)}%',
        f'%"name":{dumps(name)[:-1]}@%',
    )
    await conn.notify_tasks()


async def is_breaker_closed(conn: Connection, name: str) -> bool:
    """The admission's fast path, a read: most attempts meet a closed (or absent) breaker."""
    state = await conn.fetchval("SELECT state FROM circuit_breakers WHERE activity_name = $1", name)
    return state is None or state == BreakerState.CLOSED.value


async def admit_attempt(
    conn: Connection, task: ClaimedTask, call: BreakerCall, now: int
) -> Admission:
    """May this attempt run? If its breaker is open (or another attempt probes), the task is
    released until the breaker should be asked again, with its claim uncounted: a deferred
    attempt consumes no retry. Past the call's deadline it is refused instead."""
    locked = await conn.fetchval(
        f"SELECT attempts FROM tasks WHERE task_id = $1 AND lease_owner = $2 AND attempts = $3"
        f"{conn.dialect.for_update}",
        task.task_id,
        task.owner,
        task.attempt,
    )
    if locked is None:
        return Admission(is_admitted=False, is_held=False)  # lease lost: someone else runs it
    current = await _lock_breaker(conn, call.activity_name)
    if current is None:
        return Admission(is_admitted=True)
    after, retry_at = current.admitted(call, task.task_key, now)
    if after != current:
        await _save_breaker(conn, after, call.policy, now)
    if retry_at is None:
        return Admission(is_admitted=True)
    since = task.payload.get(DEFERRED_SINCE)
    since = since if isinstance(since, int) else now
    if call.timeout_ms is not None and retry_at > since + call.timeout_ms:
        return Admission(is_admitted=False, is_expired=True, waited_ms=now - since)
    await conn.execute(
        "UPDATE tasks SET lease_owner = NULL, lease_expires_at = NULL, run_at = $1, "
        "attempts = attempts - 1, payload = $2 WHERE task_id = $3",
        retry_at,
        dumps({**task.payload, DEFERRED_SINCE: since, DEFERRALS: _deferrals(task) + 1}),
        task.task_id,
    )
    if not _deferrals(task):  # once per call: `loom logs` says why it waits
        await conn.execute(
            "INSERT INTO logs (workflow_id, level, message, created_at) "
            "VALUES ($1, 'WARNING', $2, $3)",
            task.workflow_id,
            f"activity {call.activity_name!r} deferred: its circuit breaker is {after.state} "
            f"(it fails downstream); the call waits without spending an attempt",
            now,
        )
    return Admission(is_admitted=False, retry_at=retry_at, state=after.state)


async def list_breakers(conn: Connection) -> list[Breaker]:
    rows = await conn.fetch(
        f"SELECT {_BREAKER_COLUMNS} FROM circuit_breakers ORDER BY activity_name"
    )
    return [_breaker(row) for row in rows]


async def reset_breaker(conn: Connection, name: str, now: int) -> bool:
    """Close a breaker by hand; its deferred attempts become due at once."""
    reset = await conn.execute(
        "UPDATE circuit_breakers SET state = $1, failure_times = '[]', opened_at = NULL, "
        "probe_key = NULL, probe_until = NULL, updated_at = $2 WHERE activity_name = $3",
        BreakerState.CLOSED.value,
        now,
        name,
    )
    if not reset:
        return False
    await _wake_deferred(conn, name, now)
    return True
