"""`loom schedule create|list|pause|resume|delete|trigger`: thin commands over `loom.scheduler`.

Workers fire schedules (`loom worker --app MODULE` for the schedule's workflow); these
commands only change what is stored.
"""

from __future__ import annotations

import click

from loom.cli.options import (
    InvalidInputError,
    UnknownWorkflowTypeError,
    database_option,
    echo_json,
    json_option,
    open_store,
    print_table,
    read_json,
    run,
    when,
)
from loom.cli.workflows import compiled_workflows
from loom.cron import Schedule
from loom.scheduler import get_schedule, list_schedules, schedule

__all__ = ["schedule_group"]

schedule_group: click.Group = click.Group(
    "schedule", help="Start workflows on a cron schedule (fired by the running workers)."
)


@schedule_group.command()
@click.argument("name")
@click.option("--cron", required=True, help='Cron expression, e.g. "*/5 * * * *".')
@click.option("--workflow", "workflow_name", required=True, help="The @loom.workflow name.")
@click.option("--app", "app", required=True, help="Module defining the workflow.")
@click.option("--input", "input_text", default="{}", show_default=True, metavar="JSON|@FILE|-")
@click.option("--timezone", default="UTC", show_default=True, help="IANA zone of the cron.")
@click.option("--overlap", type=click.Choice(["skip", "allow"]), default="skip", show_default=True)
@click.option(
    "--catchup", type=click.Choice(["none", "one", "all"]), default="one", show_default=True
)
@click.option("--paused", is_flag=True, help="Create it paused (start nothing until resumed).")
@database_option
def create(
    name: str,
    cron: str,
    workflow_name: str,
    app: str,
    input_text: str,
    timezone: str,
    overlap: str,
    catchup: str,
    paused: bool,
    database: str,
) -> None:
    """Create (or replace) schedule NAME; prints its next tick."""
    workflows = compiled_workflows(app)
    compiled = workflows.get(workflow_name)
    if compiled is None:
        raise UnknownWorkflowTypeError(workflow_name, app, list(workflows))
    value = read_json(input_text, "--input")
    try:
        compiled.encode_input(value)
    except TypeError as err:
        raise InvalidInputError("--input", f"does not fit: {err}") from err

    async def operation() -> Schedule:
        open_store(database, create=True)
        handle = await schedule(
            name,
            workflow=compiled,
            cron=cron,
            input=value,
            timezone=timezone,
            overlap=overlap,
            catchup=catchup,
            paused=paused,
            app=app,
            database=database,
        )
        return handle.record

    record = run(operation)
    state = "paused" if record.is_paused else f"next tick {when(record.next_fire_at)} UTC"
    click.echo(f"schedule {name} of {workflow_name}: {cron} ({timezone}), {state}")


@schedule_group.command(name="list")
@json_option
@database_option
def list_(as_json: bool, database: str) -> None:
    """Every schedule: cron, zone, policies, next tick and what it started."""

    async def operation() -> list[Schedule]:
        open_store(database)
        return await list_schedules(database=database)

    records = run(operation)
    if as_json:
        echo_json([r.to_json() for r in records])
        return
    if not records:
        click.echo("no schedules; create one with `loom schedule create`", err=True)
        return
    print_table(
        ("NAME", "CRON", "TIMEZONE", "WORKFLOW", "STATE", "NEXT (UTC)", "FIRED", "LAST WORKFLOW"),
        [
            (
                r.name,
                r.cron,
                r.timezone,
                r.workflow_name,
                "paused" if r.is_paused else "active",
                when(r.next_fire_at),
                str(r.fired_count),
                r.last_workflow_id or "-",
            )
            for r in records
        ],
    )


def _change(name: str, database: str, action: str) -> Schedule | None:
    async def operation() -> Schedule | None:
        open_store(database)
        handle = await get_schedule(name, database=database)
        if action == "pause":
            return await handle.pause()
        if action == "resume":
            return await handle.resume()
        await handle.delete()
        return None

    return run(operation)


@schedule_group.command()
@click.argument("name")
@database_option
def pause(name: str, database: str) -> None:
    """Start nothing from schedule NAME until it is resumed."""
    _change(name, database, "pause")
    click.echo(f"schedule {name} paused")


@schedule_group.command()
@click.argument("name")
@database_option
def resume(name: str, database: str) -> None:
    """Fire schedule NAME again (ticks missed while paused follow its --catchup)."""
    record = _change(name, database, "resume")
    assert record is not None
    click.echo(f"schedule {name} resumed; next tick {when(record.next_fire_at)} UTC")


@schedule_group.command()
@click.argument("name")
@database_option
def delete(name: str, database: str) -> None:
    """Delete schedule NAME (workflows it started are left alone)."""
    _change(name, database, "delete")
    click.echo(f"schedule {name} deleted")


@schedule_group.command()
@click.argument("name")
@click.option("--app", "app", help="Module defining the workflow (default: the one created with).")
@database_option
def trigger(name: str, app: str | None, database: str) -> None:
    """Start schedule NAME's workflow now, outside its cron; prints the workflow id."""

    async def operation() -> tuple[Schedule, str]:
        open_store(database)
        handle = await get_schedule(name, database=database)
        module = app or handle.record.app
        if module:
            compiled_workflows(module)  # defines the workflow in this process
        return handle.record, await handle.trigger()

    record, started = run(operation)
    click.echo(f"started {record.workflow_name} workflow {started}", err=True)
    click.echo(started)
