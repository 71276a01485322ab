"""Reads of workflows, logs, egress, task counts and history: no writes, no locks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from loom._json import JSON, loads
from loom.dialect import Connection
from loom.history import STATE_KINDS, Event, EventKind, WorkflowStatus, fold_state
from loom.operations._rows import WORKFLOW_COLUMNS, _event, _record
from loom.store import CloseScan, WorkflowRecord


async def _records(conn: Connection, rows: Sequence[Any]) -> list[WorkflowRecord]:
    """Records with their current state: the stored snapshot plus the state events written
    since (`state_through` set), so a step never rewrites the whole state."""
    records = []
    for row in rows:
        record = _record(row)
        if row[19] is not None:
            events = await conn.fetch(
                "SELECT sequence, kind, payload, created_at FROM events WHERE workflow_id = $1 "
                f"AND sequence > $2 AND {conn.dialect.any('kind', 3)} ORDER BY sequence",
                record.workflow_id,
                row[19],
                [str(kind) for kind in STATE_KINDS],
            )
            fold_state(record.state, (_event(event) for event in events))
        records.append(record)
    return records


async def get_workflow(conn: Connection, workflow_id: str) -> WorkflowRecord | None:
    row = await conn.fetchrow(
        f"SELECT {WORKFLOW_COLUMNS} FROM workflows WHERE workflow_id = $1", workflow_id
    )
    return (await _records(conn, [row]))[0] if row else None


async def get_workflows(conn: Connection, workflow_ids: list[str]) -> list[WorkflowRecord]:
    rows = await conn.fetch(
        f"SELECT {WORKFLOW_COLUMNS} FROM workflows WHERE {conn.dialect.any('workflow_id', 1)}",
        workflow_ids,
    )
    return await _records(conn, rows)


async def get_statuses(conn: Connection, workflow_ids: list[str]) -> dict[str, WorkflowStatus]:
    rows = await conn.fetch(
        f"SELECT workflow_id, status FROM workflows WHERE {conn.dialect.any('workflow_id', 1)}",
        workflow_ids,
    )
    return {row[0]: WorkflowStatus(row[1]) for row in rows}


async def closed_since(
    conn: Connection, mark: int | None, version: int | None, limit: int
) -> CloseScan:
    """The workflows closed after close number `mark`, oldest first, at most `limit`.

    No mark: only the current one (the caller waits from here). With the `version` the last
    scan returned and a change counter that has not moved, nothing can have closed in
    another process, and no row is read. The mark and the rows come from one read
    transaction, and numbers commit in order (see `Dialect.next_close`), so a close that
    commits after this read has a number above the returned mark: the next scan finds it.
    """
    d = conn.dialect
    if d.next_close is None:
        raise ValueError(f"the {d.name} store does not number closes: wait on its NOTIFY")
    now = None if d.change_counter is None else int(await conn.fetchval(d.change_counter))
    if mark is None:
        top = await conn.fetchval(
            "SELECT closed_seq FROM workflows WHERE closed_seq IS NOT NULL "
            "ORDER BY closed_seq DESC LIMIT 1"
        )
        return CloseScan(mark=int(top or 0), version=now, workflow_ids=[], is_complete=True)
    if now is not None and now == version:
        return CloseScan(mark=mark, version=now, workflow_ids=[], is_complete=True)
    rows = await conn.fetch(
        "SELECT workflow_id, closed_seq FROM workflows WHERE closed_seq > $1 "
        "ORDER BY closed_seq LIMIT $2",
        mark,
        limit,
    )
    is_complete = len(rows) < limit  # else cut: drop the counter, so the next scan reads on
    return CloseScan(
        mark=int(rows[-1][1]) if rows else mark,
        version=now if is_complete else None,
        workflow_ids=[row[0] for row in rows],
        is_complete=is_complete,
    )


async def list_workflows(
    conn: Connection,
    statuses: list[WorkflowStatus],
    name: str | None,
    owner: str | None,
    limit: int,
) -> list[WorkflowRecord]:
    clauses: list[str] = []
    params: list[Any] = []
    if statuses:
        params.append([str(s) for s in statuses])
        clauses.append(conn.dialect.any("status", len(params)))
    if name:
        params.append(name)
        clauses.append(f"workflow_name = ${len(params)}")
    if owner:
        params.append(owner)
        clauses.append(f"owner = ${len(params)}")
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    params.append(limit)
    rows = await conn.fetch(
        f"SELECT {WORKFLOW_COLUMNS} FROM workflows {where} "
        f"ORDER BY created_at DESC, workflow_id LIMIT ${len(params)}",
        *params,
    )
    return await _records(conn, rows)


async def list_logs(conn: Connection, workflow_id: str) -> list[tuple[int, str, str]]:
    rows = await conn.fetch(
        "SELECT created_at, level, message FROM logs WHERE workflow_id = $1 ORDER BY log_id",
        workflow_id,
    )
    return [(int(r[0]), str(r[1]), str(r[2])) for r in rows]


async def egress_totals(conn: Connection, activity: str) -> dict[str, dict[str, JSON]]:
    """Egress journal totals of `activity`'s completed calls, per version (scans the
    completions that journaled a request; none has a body or a secret to read)."""
    rows = await conn.fetch(
        "SELECT payload FROM events WHERE kind = $1 AND payload LIKE $2",
        EventKind.ACTIVITY_COMPLETED.value,
        '%"egress":[{%',
    )
    totals: dict[str, dict[str, JSON]] = {}
    for (raw,) in rows:
        payload = loads(raw)
        pin = payload.get("pin")
        if str(payload.get("name", "")).split("@")[0] != activity or not isinstance(pin, dict):
            continue
        entries = payload["usage"]["egress"]
        total = totals.setdefault(
            str(pin.get("version")),
            {"calls": 0, "requests": 0, "bytes_out": 0, "bytes_in": 0, "duration_ms": 0.0},
        )
        total["calls"] += 1
        total["requests"] += len(entries)
        for key in ("bytes_out", "bytes_in", "duration_ms"):
            total[key] += sum(e.get(key) or 0 for e in entries)
        hosts = {f"{e.get('host')}:{e.get('port')}" for e in entries}
        total["hosts"] = sorted(hosts.union(total.get("hosts", ())))
    return totals


async def count_tasks(conn: Connection, now: int) -> dict[str, int]:
    row = await conn.fetchrow(
        "SELECT "
        "COALESCE(SUM(CASE WHEN lease_owner IS NOT NULL AND lease_expires_at >= $1 THEN 1 END),0),"
        "COALESCE(SUM(CASE WHEN lease_owner IS NOT NULL AND lease_expires_at < $1 THEN 1 END),0),"
        "COALESCE(SUM(CASE WHEN lease_owner IS NULL THEN 1 END), 0) FROM tasks",
        now,
    )
    return {"leased": int(row[0]), "expired": int(row[1]), "queued": int(row[2])}


async def task_horizon(conn: Connection, now: int) -> tuple[int, int | None]:
    row = await conn.fetchrow(
        "SELECT COUNT(CASE WHEN lease_owner IS NOT NULL OR run_at <= $1 THEN 1 END), "
        "MIN(CASE WHEN lease_owner IS NULL AND run_at > $1 THEN run_at END) FROM tasks",
        now,
    )
    return int(row[0]), None if row[1] is None else int(row[1])


async def load_events(conn: Connection, workflow_id: str, after: int) -> list[Event]:
    rows = await conn.fetch(
        "SELECT sequence, kind, payload, created_at FROM events "
        "WHERE workflow_id = $1 AND sequence > $2 ORDER BY sequence",
        workflow_id,
        after,
    )
    return [_event(r) for r in rows]
