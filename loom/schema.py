"""The engine's tables, one text for both stores.

Migrations are numbered by their place in `MIGRATIONS` and applied once each, in order, by
the store that opens the database (`schema_migrations` keeps what was applied per
component; the activity registry keeps its own). `{id}` is the auto-numbered key column:
SQLite's rowid alias or a PostgreSQL sequence. Every other type is spelled the same; SQLite
gives `BIGINT` integer affinity.
"""

from __future__ import annotations

SCHEMA_COMPONENT = "loom"

_MIGRATIONS = [
    """
    CREATE TABLE IF NOT EXISTS workflows (
        workflow_id TEXT PRIMARY KEY,
        workflow_name TEXT NOT NULL,
        workflow_version TEXT NOT NULL,
        status TEXT NOT NULL,
        input TEXT NOT NULL,
        state TEXT NOT NULL,
        error TEXT,
        owner TEXT,
        agent TEXT,
        parent_id TEXT,
        parent_seq BIGINT,
        source_hash TEXT NOT NULL,
        current_step TEXT,
        step_description TEXT,
        step_index BIGINT NOT NULL DEFAULT 0,
        total_steps BIGINT NOT NULL,
        last_sequence BIGINT NOT NULL,
        processed_sequence BIGINT NOT NULL DEFAULT 0,
        epoch BIGINT NOT NULL DEFAULT 0,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS workflows_by_status ON workflows (status, workflow_name);
    CREATE INDEX IF NOT EXISTS workflows_by_owner ON workflows (owner, status);
    CREATE INDEX IF NOT EXISTS workflows_by_parent ON workflows (parent_id);
    CREATE TABLE IF NOT EXISTS events (
        workflow_id TEXT NOT NULL,
        sequence BIGINT NOT NULL,
        kind TEXT NOT NULL,
        payload TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        PRIMARY KEY (workflow_id, sequence)
    );
    CREATE TABLE IF NOT EXISTS tasks (
        task_id {id},
        task_key TEXT NOT NULL UNIQUE,
        workflow_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        payload TEXT NOT NULL,
        run_at BIGINT NOT NULL,
        attempts BIGINT NOT NULL DEFAULT 0,
        lease_owner TEXT,
        lease_expires_at BIGINT
    );
    CREATE INDEX IF NOT EXISTS tasks_by_run_at ON tasks (run_at);
    CREATE INDEX IF NOT EXISTS tasks_by_owner ON tasks (lease_owner);
    CREATE INDEX IF NOT EXISTS tasks_by_workflow ON tasks (workflow_id);
    CREATE TABLE IF NOT EXISTS logs (
        log_id {id},
        workflow_id TEXT NOT NULL,
        level TEXT NOT NULL,
        message TEXT NOT NULL,
        created_at BIGINT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS logs_by_workflow ON logs (workflow_id, log_id);
    """,
    # SQLite's clock anchor per host boot (see `loom.clock`); PostgreSQL reads the server's
    # clock instead and leaves it empty.
    """
    CREATE TABLE IF NOT EXISTS clock (
        boot_id TEXT NOT NULL,
        monotonic_ms DOUBLE PRECISION NOT NULL,
        wall_ms BIGINT NOT NULL
    );
    """,
    # Declarative workflow definitions (`loom wdl register`): immutable versions, looked up
    # by name and version to start one and by sha256 to run the exact one a workflow began.
    """
    CREATE TABLE IF NOT EXISTS definitions (
        name TEXT NOT NULL,
        version TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        document TEXT NOT NULL,
        registered_at BIGINT NOT NULL,
        PRIMARY KEY (name, version)
    );
    CREATE INDEX IF NOT EXISTS definitions_by_sha256 ON definitions (sha256);
    """,
    # Resilience (issue 18): one circuit breaker per activity name, shared by every worker on
    # the database, and the cron schedules workers fire (`next_fire_at` is the compare-and-set
    # that lets exactly one of them start each tick).
    """
    CREATE TABLE IF NOT EXISTS circuit_breakers (
        activity_name TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        failure_times TEXT NOT NULL,
        opened_at BIGINT,
        probe_key TEXT,
        probe_until BIGINT,
        times_opened BIGINT NOT NULL DEFAULT 0,
        failures BIGINT NOT NULL,
        window_ms BIGINT NOT NULL,
        reset_after_ms BIGINT NOT NULL,
        updated_at BIGINT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS schedules (
        name TEXT PRIMARY KEY,
        cron TEXT NOT NULL,
        timezone TEXT NOT NULL,
        workflow_name TEXT NOT NULL,
        app TEXT,
        input TEXT NOT NULL,
        overlap TEXT NOT NULL,
        catchup TEXT NOT NULL,
        is_paused BIGINT NOT NULL DEFAULT 0,
        next_fire_at BIGINT NOT NULL,
        last_fired_at BIGINT,
        last_workflow_id TEXT,
        fired_count BIGINT NOT NULL DEFAULT 0,
        skipped_count BIGINT NOT NULL DEFAULT 0,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS schedules_by_next_fire ON schedules (next_fire_at);
    """,
    # Suspend/resume (issue 15): `recoveries` counts the claims of a task that found its
    # previous lease expired, in a row (a worker died running it); a retry or a resume
    # resets it. At `max_recoveries` the worker suspends the workflow (a poison pill).
    """
    ALTER TABLE tasks ADD COLUMN recoveries BIGINT NOT NULL DEFAULT 0;
    """,
    # Stored state as of an event (NULL: current): a step writes only its state events and
    # the whole state is rewritten now and then; readers fold the events after it.
    """
    ALTER TABLE workflows ADD COLUMN state_through BIGINT;
    """,
    # Durable actors (`loom.ask`): a handler's reply waits here, written in the transaction
    # of the activation that produced it, until the asker takes (deletes) it.
    """
    CREATE TABLE IF NOT EXISTS actor_replies (
        reply_id TEXT PRIMARY KEY,
        workflow_id TEXT NOT NULL,
        body TEXT NOT NULL,
        created_at BIGINT NOT NULL
    );
    """,
    # Cross-process waiters (issue 16): on SQLite every close takes the next number under
    # the database's one write lock, so a client finds the closes since the last number it
    # saw in the index (O(closed since), not one status read per waiting handle).
    # PostgreSQL leaves it NULL: its closes reach other processes over NOTIFY.
    """
    ALTER TABLE workflows ADD COLUMN closed_seq BIGINT;
    CREATE INDEX IF NOT EXISTS workflows_by_closed_seq ON workflows (closed_seq)
        WHERE closed_seq IS NOT NULL;
    """,
]


def migrations(id_column: str) -> list[str]:
    """The migration scripts with the dialect's auto-numbered key column filled in."""
    return [script.replace("{id}", id_column) for script in _MIGRATIONS]


MIGRATIONS = migrations("INTEGER PRIMARY KEY")
"""As SQLite runs them; `len(MIGRATIONS)` is the current schema version for both stores."""
