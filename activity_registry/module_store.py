"""The registry's tables: activity versions and content-addressed module bytes (by sha256).

Synchronous by design: every public method is one whole transaction, meant to run on the
registry's database thread (one thread hop per operation). SQL stays portable (no SQLite-only
syntax beyond the connection pragmas) so a PostgreSQL backend can reuse it with `$n` params.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from activity_registry.approval import approved_grants
from activity_registry.manifest import ActivityVersion, CircuitBreakerPolicy, RetryPolicy
from wasm_activities import Grants, Limits

__all__ = [
    "COMPONENT",
    "SCHEMA_VERSION",
    "Decision",
    "ModuleStore",
    "PostgresModuleStore",
    "Registration",
    "is_postgres_url",
]

COMPONENT = "activity_registry"
SCHEMA_VERSION = 3
BUSY_TIMEOUT_MS = 10_000
MIGRATION_LOCK = 0x6C6F6F6D
"""pg_advisory_xact_lock key; the engine's PostgreSQL store takes the same one to migrate."""
POSTGRES_SCHEMES = ("postgres://", "postgresql://")

_MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """
        CREATE TABLE IF NOT EXISTS activity_modules (
            sha256 TEXT PRIMARY KEY,
            size_bytes INTEGER NOT NULL,
            content BLOB NOT NULL,
            created_at INTEGER NOT NULL
        )
        """,
        """
        CREATE TABLE IF NOT EXISTS activity_versions (
            name TEXT NOT NULL,
            version TEXT NOT NULL,
            abi TEXT NOT NULL,
            sha256 TEXT REFERENCES activity_modules (sha256),
            description TEXT NOT NULL,
            input_schema TEXT NOT NULL,
            output_schema TEXT NOT NULL,
            limits TEXT NOT NULL,
            grants TEXT NOT NULL,
            retry TEXT NOT NULL,
            registered_at INTEGER NOT NULL,
            PRIMARY KEY (name, version)
        )
        """,
        "CREATE INDEX IF NOT EXISTS activity_versions_sha256 ON activity_versions (sha256)",
    ),
    # Per name, not per version: deleting versions must not reset what was approved.
    2: (
        """
        CREATE TABLE IF NOT EXISTS activity_grant_approvals (
            name TEXT PRIMARY KEY,
            grants TEXT NOT NULL,
            approved_at INTEGER NOT NULL
        )
        """,
    ),
    # `[circuit_breaker]` of a manifest (NULL: none); the breaker's state is the engine's.
    3: ("ALTER TABLE activity_versions ADD COLUMN circuit_breaker TEXT",),
}

_COLUMNS = (
    "name, version, abi, sha256, description, input_schema, output_schema, "
    "limits, grants, retry, registered_at, circuit_breaker"
)


def now_ms() -> int:
    """Unix time in milliseconds (the unit of every `*_at` column)."""
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class Registration:
    """What `ModuleStore.register` did: the stored version and whether a row was written."""

    activity: ActivityVersion
    created: bool


# Called inside the write transaction with every stored version of the name and the grants
# recorded as approved for it (None: none recorded); returns the already-stored equal version
# (no-op) or None (insert), or raises to abort.
Decision = Callable[[list[ActivityVersion], Grants | None], ActivityVersion | None]


def _to_row(activity: ActivityVersion) -> tuple[object, ...]:
    return (
        activity.name,
        activity.version,
        activity.abi,
        activity.sha256,
        activity.description,
        json.dumps(activity.input_schema, sort_keys=True),
        json.dumps(activity.output_schema, sort_keys=True),
        activity.limits.model_dump_json(),
        activity.grants.model_dump_json(),
        activity.retry.model_dump_json(),
        activity.registered_at,
        None if activity.circuit_breaker is None else activity.circuit_breaker.model_dump_json(),
    )


def _from_row(row: sqlite3.Row) -> ActivityVersion:
    return ActivityVersion(
        name=row["name"],
        version=row["version"],
        abi=row["abi"],
        sha256=row["sha256"],
        description=row["description"],
        input_schema=json.loads(row["input_schema"]),
        output_schema=json.loads(row["output_schema"]),
        limits=Limits.model_validate_json(row["limits"]),
        grants=Grants.model_validate_json(row["grants"]),
        retry=RetryPolicy.model_validate_json(row["retry"]),
        registered_at=row["registered_at"],
        circuit_breaker=(
            CircuitBreakerPolicy.model_validate_json(row["circuit_breaker"])
            if row["circuit_breaker"]
            else None
        ),
    )


class ModuleStore:
    """One SQLite connection (WAL, busy_timeout) holding the registry's tables.

    Not thread-safe: use it from one thread only (the registry's database thread).
    """

    def __init__(self, path: str | Path) -> None:
        self._connection = sqlite3.connect(
            path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
        )
        self._connection.row_factory = sqlite3.Row
        self._connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        self._enable_wal()
        self._connection.execute("PRAGMA foreign_keys = ON")
        self._migrate()

    def _enable_wal(self) -> None:
        # Switching a fresh file to WAL ignores busy_timeout: registries opening it together
        # (several workers starting) see "database is locked" at once, so retry briefly.
        for attempt in range(50):
            try:
                self._connection.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as err:
                if "locked" not in str(err) or attempt == 49:
                    raise
                time.sleep(0.002 * (attempt + 1))

    def close(self) -> None:
        """Close the connection."""
        self._connection.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction taken up front, so the checks inside it cannot race a writer."""
        self._connection.execute("BEGIN IMMEDIATE")
        try:
            yield self._connection
        except BaseException:
            self._connection.execute("ROLLBACK")
            raise
        self._connection.execute("COMMIT")

    def _migrate(self) -> None:
        with self._write() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " component TEXT NOT NULL, version INTEGER NOT NULL,"
                " applied_at INTEGER NOT NULL, PRIMARY KEY (component, version))"
            )
            applied = {
                row[0]
                for row in db.execute(
                    "SELECT version FROM schema_migrations WHERE component = ?", (COMPONENT,)
                )
            }
            for version, statements in sorted(_MIGRATIONS.items()):
                if version in applied:
                    continue
                for statement in statements:
                    db.execute(statement)
                db.execute(
                    "INSERT INTO schema_migrations (component, version, applied_at)"
                    " VALUES (?, ?, ?)",
                    (COMPONENT, version, now_ms()),
                )

    def versions(self, name: str) -> list[ActivityVersion]:
        """Every stored version of `name` (unordered)."""
        rows = self._connection.execute(
            f"SELECT {_COLUMNS} FROM activity_versions WHERE name = ?", (name,)
        )
        return [_from_row(row) for row in rows]

    def all_versions(self) -> list[ActivityVersion]:
        """Every stored version of every activity (unordered)."""
        rows = self._connection.execute(f"SELECT {_COLUMNS} FROM activity_versions")
        return [_from_row(row) for row in rows]

    def get(self, name: str, version: str) -> ActivityVersion | None:
        """The stored name@version, or None."""
        row = self._connection.execute(
            f"SELECT {_COLUMNS} FROM activity_versions WHERE name = ? AND version = ?",
            (name, version),
        ).fetchone()
        return None if row is None else _from_row(row)

    def module_bytes(self, sha256: str) -> bytes | None:
        """The module stored under `sha256`, or None."""
        row = self._connection.execute(
            "SELECT content FROM activity_modules WHERE sha256 = ?", (sha256,)
        ).fetchone()
        return None if row is None else bytes(row[0])

    def approved_grants(self, name: str) -> Grants | None:
        """The grants recorded as approved for `name` (None if none were ever recorded)."""
        row = self._connection.execute(
            "SELECT grants FROM activity_grant_approvals WHERE name = ?", (name,)
        ).fetchone()
        return None if row is None else Grants.model_validate_json(row[0])

    def register(
        self, activity: ActivityVersion, content: bytes | None, decide: Decision
    ) -> Registration:
        """Store `activity` (and its module bytes) in one transaction, unless `decide` objects.

        `decide` sees the name's stored versions and recorded approvals inside the
        transaction; it raises to refuse, returns the equal stored version to make this a
        no-op, or None to insert. Inserting a WebAssembly version records its grants as
        approved for the name (with everything approved before).
        """
        with self._write() as db:
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM activity_versions WHERE name = ?", (activity.name,)
            )
            stored = [_from_row(row) for row in rows]
            recorded = self.approved_grants(activity.name)
            existing = decide(stored, recorded)
            if existing is not None:
                return Registration(existing, created=False)
            if not activity.is_native:
                self._record_approval(activity, approved_grants(recorded, [*stored, activity]))
            if content is not None and activity.sha256 is not None:
                db.execute(
                    "INSERT INTO activity_modules (sha256, size_bytes, content, created_at)"
                    " VALUES (?, ?, ?, ?) ON CONFLICT (sha256) DO NOTHING",
                    (activity.sha256, len(content), content, activity.registered_at),
                )
            db.execute(
                "DELETE FROM activity_versions WHERE name = ? AND version = ?",
                (activity.name, activity.version),
            )
            db.execute(
                f"INSERT INTO activity_versions ({_COLUMNS})"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                _to_row(activity),
            )
        return Registration(activity, created=True)

    def _record_approval(self, activity: ActivityVersion, grants: Grants) -> None:
        self._connection.execute(
            "DELETE FROM activity_grant_approvals WHERE name = ?", (activity.name,)
        )
        self._connection.execute(
            "INSERT INTO activity_grant_approvals (name, grants, approved_at) VALUES (?, ?, ?)",
            (activity.name, grants.model_dump_json(), activity.registered_at),
        )

    def delete(self, name: str, version: str) -> bool:
        """Delete name@version and, if no other version uses them, its module bytes.

        The name's grant approvals stay: re-registering it must not skip approval.
        """
        with self._write() as db:
            row = db.execute(
                "SELECT sha256 FROM activity_versions WHERE name = ? AND version = ?",
                (name, version),
            ).fetchone()
            if row is None:
                return False
            db.execute(
                "DELETE FROM activity_versions WHERE name = ? AND version = ?", (name, version)
            )
            if row[0] is not None:
                db.execute(
                    "DELETE FROM activity_modules WHERE sha256 = ? AND NOT EXISTS"
                    " (SELECT 1 FROM activity_versions WHERE sha256 = ?)",
                    (row[0], row[0]),
                )
        return True


def is_postgres_url(database: str) -> bool:
    """Whether `database` names a PostgreSQL server rather than a SQLite file."""
    return database.startswith(POSTGRES_SCHEMES)


class _PostgresCursor:
    def __init__(self, rows: list[Any]) -> None:
        self._rows = rows

    def fetchone(self) -> Any:
        return self._rows[0] if self._rows else None

    def __iter__(self) -> Iterator[Any]:
        return iter(self._rows)


class _PostgresConnection:
    """The slice of `sqlite3.Connection` ModuleStore uses, over one asyncpg connection.

    asyncpg is async; this thread (the registry's database thread) owns a private event loop
    and runs each statement to completion on it. `?` placeholders become `$n`, BLOB BYTEA.
    """

    def __init__(self, url: str) -> None:
        self._url = url
        self._loop = asyncio.new_event_loop()
        try:
            self._conn = self._connect()
        except BaseException:
            self._loop.close()
            raise

    def _connect(self) -> Any:
        import asyncpg

        return self._loop.run_until_complete(asyncpg.connect(self._url))

    def execute(self, sql: str, params: Sequence[object] = ()) -> _PostgresCursor:
        if sql == "BEGIN IMMEDIATE":  # serialize writers as SQLite's write lock does
            if self._conn.is_closed():  # between transactions a lost connection is replaced
                self._conn = self._connect()
            self._run("BEGIN", ())
            self._run("SELECT pg_advisory_xact_lock($1)", (MIGRATION_LOCK,))
            return _PostgresCursor([])
        pieces = sql.replace("BLOB", "BYTEA").replace("INTEGER", "BIGINT").split("?")
        numbered = pieces[0] + "".join(f"${i}{rest}" for i, rest in enumerate(pieces[1:], 1))
        if sql == "ROLLBACK" and self._conn.is_closed():
            return _PostgresCursor([])  # the server already rolled back; keep the cause
        if self._conn.is_in_transaction() or sql in ("COMMIT", "ROLLBACK"):
            return _PostgresCursor(self._run(numbered, params))
        import asyncpg

        try:  # a read on its own: safe to repeat once on a fresh connection
            return _PostgresCursor(self._run(numbered, params))
        except (asyncpg.ConnectionDoesNotExistError, asyncpg.InterfaceError):
            self._conn = self._connect()
            return _PostgresCursor(self._run(numbered, params))

    def _run(self, sql: str, params: Sequence[object]) -> list[Any]:
        return cast(list[Any], self._loop.run_until_complete(self._conn.fetch(sql, *params)))

    def close(self) -> None:
        try:
            self._loop.run_until_complete(self._conn.close())
        finally:
            self._loop.close()


class PostgresModuleStore(ModuleStore):
    """The same tables in PostgreSQL (module bytes as BYTEA), so workers on any host load them.

    Not thread-safe: use it from one thread only (the registry's database thread).
    """

    def __init__(self, url: str) -> None:  # no super().__init__: that opens SQLite
        # Duck-typed: ModuleStore only calls execute() (and close()) on its connection.
        self._connection = cast(sqlite3.Connection, _PostgresConnection(url))
        try:
            self._migrate()
        except BaseException:
            self._connection.close()
            raise
