"""Operator views (read-only): store statistics, LLM token totals and diagnosis."""

from __future__ import annotations

from loom.dialect import Connection
from loom.history import CLOSING_KINDS, COMMAND_KINDS, EventKind, WorkflowStatus
from loom.operations._rows import _OPEN, _event
from loom.schema import MIGRATIONS, SCHEMA_COMPONENT
from loom.store import WAIT_KINDS, Diagnosis, StoreStats, split_idle


async def collect_stats(conn: Connection, now: int) -> StoreStats:
    workflows = {status.value: 0 for status in WorkflowStatus}
    for status, count in await conn.fetch("SELECT status, COUNT(*) FROM workflows GROUP BY status"):
        workflows[str(status)] = int(count)
    row = await conn.fetchrow(
        "SELECT "
        "COALESCE(SUM(CASE WHEN lease_owner IS NULL AND run_at <= $1 THEN 1 ELSE 0 END), 0), "
        "COALESCE(SUM(CASE WHEN lease_owner IS NULL AND run_at > $1 THEN 1 ELSE 0 END), 0), "
        "COALESCE(SUM(CASE WHEN lease_owner IS NOT NULL AND lease_expires_at >= $1 "
        "THEN 1 ELSE 0 END), 0), "
        "COALESCE(SUM(CASE WHEN lease_owner IS NOT NULL AND lease_expires_at < $1 "
        "THEN 1 ELSE 0 END), 0) FROM tasks",
        now,
    )
    tasks = dict(zip(("due", "scheduled", "leased", "expired"), map(int, row), strict=True))
    return StoreStats(workflows=workflows, tasks=tasks)


async def llm_token_totals(conn: Connection) -> dict[str, dict[str, int]]:
    """Tokens of every recorded model call (`llm_usage` of ACTIVITY_COMPLETED), per model.

    Reads the whole history (no counter table yet), so it is for a metrics scrape, not a
    hot path; a LIKE prefilter spares the JSON parse of the events without usage."""
    d = conn.dialect
    model = d.json_text("payload", "llm_usage", "model")
    sums = ", ".join(
        f"COALESCE(SUM(CAST({d.json_text('payload', 'llm_usage', kind)} AS BIGINT)), 0)"
        for kind in ("prompt_tokens", "completion_tokens")
    )
    rows = await conn.fetch(
        f"SELECT {model}, {sums} FROM events WHERE kind = $1 AND payload LIKE $2 "
        f"AND {model} IS NOT NULL GROUP BY {model} ORDER BY {model}",
        EventKind.ACTIVITY_COMPLETED.value,
        '%"llm_usage"%',
    )
    return {str(m): {"prompt": int(p), "completion": int(c)} for m, p, c in rows}


async def diagnose(conn: Connection, now: int) -> Diagnosis:
    d = conn.dialect
    version = await conn.fetchval(
        "SELECT COALESCE(MAX(version), 0) FROM schema_migrations WHERE component = $1",
        SCHEMA_COMPONENT,
    )
    expired = await conn.fetch(
        "SELECT task_id, workflow_id, lease_owner FROM tasks "
        "WHERE lease_owner IS NOT NULL AND lease_expires_at < $1 ORDER BY task_id",
        now,
    )
    # Open, no task row, and an event the code has not seen yet: nothing will ever run it.
    # (Events after processed_sequence that the workflow wrote itself do not count.)
    delivered = [k.value for k in EventKind if k not in COMMAND_KINDS and k not in CLOSING_KINDS]
    without_task = (
        f"FROM workflows w WHERE w.{_OPEN} "
        "AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.workflow_id = w.workflow_id)"
    )
    stuck = await conn.fetch(
        f"SELECT w.workflow_id {without_task} AND EXISTS (SELECT 1 FROM events e "
        "WHERE e.workflow_id = w.workflow_id AND e.sequence > w.processed_sequence "
        f"AND {d.any('e.kind', 1)}) ORDER BY w.created_at",
        delivered,
    )
    stuck_ids = {str(r[0]) for r in stuck}
    candidates = [
        str(r[0])
        for r in await conn.fetch(f"SELECT w.workflow_id {without_task} ORDER BY w.created_at")
        if str(r[0]) not in stuck_ids
    ]
    waits = await conn.fetch(
        "SELECT e.workflow_id, e.sequence, e.kind, e.payload, e.created_at FROM events e "
        f"WHERE {d.any('e.kind', 1)} AND e.workflow_id IN "
        f"(SELECT w.workflow_id {without_task}) ORDER BY e.workflow_id, e.sequence",
        [k.value for k in WAIT_KINDS],
    )
    idle, lost = split_idle(
        candidates, ((str(r[0]), _event(r, 1)) for r in waits if str(r[0]) not in stuck_ids)
    )
    suspended_count = await conn.fetchval(
        "SELECT COUNT(*) FROM workflows WHERE status = 'SUSPENDED'"
    )
    suspended = await conn.fetch(
        "SELECT workflow_id FROM workflows WHERE status = 'SUSPENDED' ORDER BY updated_at LIMIT 20"
    )
    return Diagnosis(
        backend=d.name,
        settings=await conn.settings(),
        schema_version=int(version),
        latest_schema_version=len(MIGRATIONS),
        expired_leases=[(int(r[0]), str(r[1]), str(r[2])) for r in expired],
        stuck=[str(r[0]) for r in stuck],
        idle=idle,
        lost=lost,
        suspended=int(suspended_count),
        suspended_ids=[str(r[0]) for r in suspended],
    )
