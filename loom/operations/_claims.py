"""Task claims and leases: claiming due tasks with their histories, extending and
giving back leases. Claims lock task rows only (the lock order in `loom.operations`)."""

from __future__ import annotations

from collections.abc import Sequence

from loom._json import loads
from loom.activation import WORKFLOW_TASK
from loom.dialect import Connection
from loom.history import Event, WorkflowStatus
from loom.operations._rows import _NOT_SUSPENDED, _event
from loom.store import ClaimedTask, CursorLookup, TaskWorkflow


async def claim_tasks(
    conn: Connection,
    owner: str,
    limit: int,
    lease_ms: int,
    cursor_of: CursorLookup,
    now: int,
    avoid: tuple[str, ...] = (),
) -> list[ClaimedTask]:
    # A leased task's run_at is its lease expiry, so one index finds due and expired tasks;
    # SKIP LOCKED lets concurrent claimers take disjoint batches without waiting.
    skip = f"AND {conn.dialect.none_of('task_key', 5)} " if avoid else ""
    # Tasks of a SUSPENDED workflow stay where they are (due times kept) until its resume.
    # A claim that finds another worker's lease still set (expired) finds a worker that
    # died running the task: `recoveries` counts those in a row (see the migration). Our
    # own expired lease is no death: this worker is alive, it only stalled.
    rows = await conn.fetch(
        "UPDATE tasks SET lease_owner = $1, lease_expires_at = $2, run_at = $2, "
        "attempts = attempts + 1, "
        "recoveries = recoveries + CASE WHEN lease_owner IS NULL OR lease_owner = $1 "
        "THEN 0 ELSE 1 END "
        "WHERE task_id IN "
        f"(SELECT task_id FROM tasks WHERE run_at <= $3 {skip}AND {_NOT_SUSPENDED} "
        f"ORDER BY run_at LIMIT $4{conn.dialect.skip_locked}) "
        "RETURNING task_id, task_key, kind, workflow_id, payload, attempts, recoveries",
        owner,
        now + lease_ms,
        now,
        limit,
        *([list(avoid)] if avoid else []),
    )
    claimed = [
        ClaimedTask(
            task_id, key, kind, workflow_id, loads(payload), attempts, owner, recoveries=recoveries
        )
        for task_id, key, kind, workflow_id, payload, attempts, recoveries in rows
    ]
    workflow_tasks = [task for task in claimed if task.kind == WORKFLOW_TASK]
    if not workflow_tasks:
        return claimed
    dropped = await _attach_histories(conn, workflow_tasks, cursor_of)
    return [task for task in claimed if task.task_id not in dropped]


async def _attach_histories(
    conn: Connection, tasks: list[ClaimedTask], cursor_of: CursorLookup
) -> set[int]:
    """Load what each workflow task needs (only unseen events when the caller's cache is
    current) in two queries; drop tasks of finished workflows. Returns the dropped ids."""
    d = conn.dialect
    rows = await conn.fetch(
        "SELECT workflow_id, workflow_name, status, epoch, processed_sequence, owner, "
        f"source_hash FROM workflows WHERE {d.any('workflow_id', 1)}",
        [task.workflow_id for task in tasks],
    )
    workflows = {row[0]: row for row in rows}
    dropped: set[int] = set()
    after: dict[str, int] = {}
    for task in tasks:
        row = workflows.get(task.workflow_id)
        if row is None or WorkflowStatus(row[2]).is_closed:
            dropped.add(task.task_id)
            continue
        cached = cursor_of(task.workflow_id)
        # Events after the caller's cursor even when its epoch is behind (its run's commit
        # may be in flight): the worker checks the epoch and loads the rest if it must.
        after[task.workflow_id] = cached[0] if cached is not None else 0
        task.workflow = TaskWorkflow(row[1], row[3], row[4], row[5], row[6])
        task.history_after = after[task.workflow_id]
        task.events = []
    if dropped:
        await conn.execute(f"DELETE FROM tasks WHERE {d.any('task_id', 1, 'bigint')}", [*dropped])
    if after:
        cursors = d.rows("c", (("workflow_id", "text"), ("after", "bigint")), 1)
        events = await conn.fetch(
            "SELECT e.workflow_id, e.sequence, e.kind, e.payload, e.created_at FROM events e "
            f"JOIN {cursors} ON e.workflow_id = c.workflow_id AND e.sequence > c.after "
            "ORDER BY e.workflow_id, e.sequence",
            *d.columns(list(after), list(after.values())),
        )
        by_workflow: dict[str, list[Event]] = {}
        for r in events:
            by_workflow.setdefault(r[0], []).append(_event(r, 1))
        for task in tasks:
            if task.task_id not in dropped:
                task.events = by_workflow.get(task.workflow_id, [])
    return dropped


async def release_claims(conn: Connection, tasks: Sequence[ClaimedTask], now: int) -> None:
    """Give back claims not started, due again at once, crash counts kept."""
    for task in tasks:
        await conn.execute(
            "UPDATE tasks SET lease_owner = NULL, lease_expires_at = NULL, run_at = $1 "
            "WHERE task_id = $2 AND lease_owner = $3 AND attempts = $4",
            now,
            task.task_id,
            task.owner,
            task.attempt,
        )


async def extend_leases(conn: Connection, owner: str, lease_ms: int, now: int) -> None:
    # SKIP LOCKED: a row locked now is being finished or re-leased by someone; waiting for
    # it could only add a lock cycle.
    await conn.execute(
        "UPDATE tasks SET lease_expires_at = $1, run_at = $1 WHERE task_id IN "
        f"(SELECT task_id FROM tasks WHERE lease_owner = $2{conn.dialect.skip_locked})",
        now + lease_ms,
        owner,
    )


async def release_tasks(conn: Connection, owner: str, now: int) -> None:
    await conn.execute(
        "UPDATE tasks SET lease_owner = NULL, lease_expires_at = NULL, run_at = $1 "
        "WHERE lease_owner = $2",
        now,
        owner,
    )
