"""`loom suspend`, `loom resume`, `loom fork`: what an operator does with a parked or broken
workflow. Thin over the handle methods users call; knows nothing of how the store parks it."""

from __future__ import annotations

import click

from loom.cli.options import database_option, echo_json, json_option, open_store, run


@click.command()
@click.argument("workflow_id", metavar="ID")
@click.option("--reason", help="Why; kept as its error and shown by `loom inspect`.")
@database_option
def suspend(workflow_id: str, reason: str | None, database: str) -> None:
    """Park workflow ID: none of its code runs until `loom resume ID`.

    Signals and timers that arrive meanwhile are kept and acted on after the resume.
    """
    from loom.client import get_handle

    async def operation() -> bool:
        open_store(database)
        return await get_handle(workflow_id, database=database).suspend(reason)

    if run(operation):
        click.echo(f"suspended {workflow_id}; `loom resume {workflow_id}` runs it again")
    else:
        click.echo(f"workflow {workflow_id} was already suspended")


@click.command()
@click.argument("workflow_id", metavar="ID")
@database_option
def resume(workflow_id: str, database: str) -> None:
    """Run SUSPENDED workflow ID again with the code the workers run now.

    If it is still broken it suspends again, with the new error (`loom inspect ID`).
    """
    from loom.client import get_handle

    async def operation() -> bool:
        open_store(database)
        return await get_handle(workflow_id, database=database).resume()

    if run(operation):
        click.echo(f"resumed {workflow_id}")
    else:
        click.echo(f"workflow {workflow_id} is not suspended; nothing to resume")


@click.command()
@click.argument("workflow_id", metavar="ID")
@click.option(
    "--at",
    "at",
    type=int,
    metavar="SEQ",
    help="Copy the events before this sequence (default: before the first failure).",
)
@click.option("--id", "new_id", metavar="NEW_ID", help="Id of the new workflow.")
@json_option
@database_option
def fork(
    workflow_id: str, at: int | None, new_id: str | None, as_json: bool, database: str
) -> None:
    """Start a new workflow from a copy of ID's history, so completed activities are not
    run again; it continues with current code (`loom inspect --events ID` shows sequences).
    """
    from loom.client import get_handle

    async def operation() -> str:
        open_store(database)
        try:
            forked = await get_handle(workflow_id, database=database).fork(
                at=at, workflow_id=new_id
            )
        except ValueError as err:  # a sequence outside the history, or a taken id
            raise click.BadParameter(str(err), param_hint="--at/--id") from err
        return forked.workflow_id

    forked_id = run(operation)
    if as_json:
        echo_json({"workflow_id": forked_id, "forked_from": workflow_id})
    else:
        click.echo(forked_id)
