"""`loom history export ID [--output FILE]`: write one workflow's history as a replayable file.

The file is what `loom replay FILE` and `loom.testing.replay(WorkflowCls, FILE)` check against
the current code: a production history becomes a unit test before a deploy.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from loom._export import export_history
from loom._json import JSON
from loom.cli.options import database_option, open_store, run
from loom.exceptions import WorkflowNotFoundError

__all__ = ["history_group"]


def _history() -> None:
    """Export workflow histories for replay tests."""


history_group = click.group("history")(_history)


@history_group.command("export")
@click.argument("workflow_id", metavar="ID")
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Write to FILE instead of stdout.",
)
@database_option
def export(workflow_id: str, output: Path | None, database: str) -> None:
    """Write workflow ID's history (every event, and its row) as JSON.

    Works for running workflows too: the export is the history so far.
    """

    async def operation() -> dict[str, JSON]:
        store = open_store(database)
        record = await store.get_workflow(workflow_id)
        if record is None:
            raise WorkflowNotFoundError(workflow_id)
        return await export_history(store, record)

    text = json.dumps(run(operation), indent=1, ensure_ascii=False) + "\n"
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")
        click.echo(f"exported workflow {workflow_id} to {output}", err=True)
