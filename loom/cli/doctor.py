"""`loom doctor`: the database's health, and the workflows nothing will ever move."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from loom.cli.options import (
    database_option,
    echo_json,
    json_option,
    open_store,
    print_fields,
    run,
)

if TYPE_CHECKING:
    from loom.store import Diagnosis


@click.command()
@json_option
@database_option
def doctor(as_json: bool, database: str) -> None:
    """Check the database: settings, schema version, expired leases and stuck workflows.

    Exit 1 when something needs an operator (wrong journal mode, old schema, stuck workflows).
    """

    async def operation() -> Diagnosis:
        return await open_store(database).diagnose()

    found = run(operation)
    problems = _problems(found)
    if as_json:
        echo_json(
            {
                "database": database,
                "backend": found.backend,
                "settings": found.settings,
                "schema_version": found.schema_version,
                "latest_schema_version": found.latest_schema_version,
                "expired_leases": [
                    {"task_id": task_id, "workflow_id": wid, "lease_owner": owner}
                    for task_id, wid, owner in found.expired_leases
                ],
                "stuck_workflows": found.stuck,
                "idle_workflows": found.idle,
                "lost_workflows": found.lost,
                "suspended_workflows": found.suspended,
                "suspended_workflow_ids": found.suspended_ids,
                "problems": problems,
                "is_healthy": not problems,
            }
        )
    else:
        _print_doctor(database, found, problems)
    if problems:
        sys.exit(1)


def _problems(found: Diagnosis) -> list[str]:
    problems = []
    if found.backend == "sqlite" and found.settings.get("journal_mode", "").lower() != "wal":
        problems.append(f"journal_mode is {found.settings.get('journal_mode')}, expected wal")
    if found.backend == "sqlite" and found.settings.get("synchronous") == "off":
        problems.append("synchronous is off: a power loss can drop committed workflow events")
    for setting in ("fsync", "synchronous_commit"):
        if found.backend == "postgresql" and found.settings.get(setting) == "off":
            problems.append(f"{setting} is off: a crash can drop committed workflow events")
    if found.schema_version < found.latest_schema_version:
        problems.append(
            f"schema version {found.schema_version} < {found.latest_schema_version}; "
            "run `loom init` to migrate"
        )
    if found.stuck:
        problems.append(
            f"{len(found.stuck)} stuck workflow(s) have unprocessed events and no task: "
            + ", ".join(found.stuck[:10])
        )
    if found.lost:
        problems.append(
            f"{len(found.lost)} workflow(s) are RUNNING with no task and nothing to wait for "
            "(no signal wait, no open child), so nothing will ever move them: "
            + ", ".join(found.lost[:10])
            + "; this is an engine defect, please report it with `loom inspect` of one"
        )
    return problems


def _print_doctor(database: str, found: Diagnosis, problems: list[str]) -> None:
    fields = [("database", f"{database} ({found.backend})")]
    fields += [(name, value) for name, value in found.settings.items()]
    fields += [
        ("schema", f"version {found.schema_version} (latest {found.latest_schema_version})"),
        ("expired leases", str(len(found.expired_leases))),
        ("stuck workflows", str(len(found.stuck))),
        ("lost workflows", str(len(found.lost))),
        ("suspended workflows", str(found.suspended)),
        ("idle workflows", f"{found.idle} (waiting for a signal or a child)"),
    ]
    print_fields(fields)
    if found.expired_leases:
        click.echo(
            f"warning: {len(found.expired_leases)} task lease(s) expired; a running worker "
            "reclaims them (start one if none runs)",
            err=True,
        )
    if found.suspended:
        click.echo(
            f"warning: {found.suspended} workflow(s) SUSPENDED, waiting for an operator: "
            + ", ".join(found.suspended_ids)
            + ("…" if found.suspended > len(found.suspended_ids) else "")
            + "; `loom inspect ID` shows why; fix the cause (deploy the code that started "
            "it, register the activity, fix what crashes the worker), then `loom resume ID` "
            "(or `loom fork ID`, `loom cancel ID`)",
            err=True,
        )
    for problem in problems:
        click.echo(f"problem: {problem}", err=True)
    click.echo("no problems found" if not problems else f"{len(problems)} problem(s) found")
