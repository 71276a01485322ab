"""Declarative workflow definitions: register, list and fetch them."""

from __future__ import annotations

from loom._json import JSON, dumps, loads
from loom.dialect import Connection
from loom.exceptions import DefinitionConflictError
from loom.store import DefinitionRecord


async def register_definition(
    conn: Connection, name: str, version: str, sha256: str, document: JSON, now: int
) -> bool:
    inserted = await conn.execute(
        "INSERT INTO definitions (name, version, sha256, document, registered_at) "
        "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (name, version) DO NOTHING",
        name,
        version,
        sha256,
        dumps(document),
        now,
    )
    if inserted:
        return True
    registered = await conn.fetchval(
        "SELECT sha256 FROM definitions WHERE name = $1 AND version = $2", name, version
    )
    if registered != sha256:
        raise DefinitionConflictError(name, version, str(registered), sha256)
    return False


async def list_definitions(conn: Connection, name: str | None) -> list[DefinitionRecord]:
    rows = await conn.fetch(
        "SELECT name, version, sha256, registered_at FROM definitions "
        "WHERE CAST($1 AS TEXT) IS NULL OR name = $1 ORDER BY name, registered_at, version",
        name,
    )
    return [DefinitionRecord(r[0], r[1], r[2], int(r[3])) for r in rows]


async def get_definition(
    conn: Connection, name: str, version: str | None, sha256_prefix: str | None
) -> DefinitionRecord | None:
    row = await conn.fetchrow(
        "SELECT name, version, sha256, registered_at, document FROM definitions "
        "WHERE name = $1 AND (CAST($2 AS TEXT) IS NULL OR version = $2) "
        "AND (CAST($3 AS TEXT) IS NULL OR substr(sha256, 1, length($3)) = $3) "
        "ORDER BY registered_at DESC LIMIT 1",
        name,
        version,
        sha256_prefix,
    )
    if row is None:
        return None
    return DefinitionRecord(row[0], row[1], row[2], int(row[3]), loads(row[4]))
