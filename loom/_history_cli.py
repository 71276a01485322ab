"""`loom history export ID [--output FILE]`: write one workflow's history as a replayable file.

The file is what `loom replay FILE` and `loom.testing.replay(WorkflowCls, FILE)` check against
the current code: a production history becomes a unit test before a deploy.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from loom._export import export_history, read_history
from loom._json import JSON
from loom.cli import database_option
from loom.exceptions import WorkflowNotFoundError
from loom.workflow import CompiledWorkflow

__all__ = ["history_group", "replay_file"]


def _history() -> None:
    """Export workflow histories for replay tests."""


# Typed here, not inferred from the decorator: mypy cannot infer it across the import cycle
# with loom.cli, which registers this group.
history_group: click.Group = click.group("history")(_history)


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

    from loom.cli import open_store, run  # defined after loom.cli registers this group

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


def replay_file(path: str, registry: dict[str, CompiledWorkflow[Any, Any]]) -> dict[str, JSON]:
    """`loom replay FILE`: one exported history against the --app code, no database."""
    from loom.cli import UnknownWorkflowTypeError, replay_history

    exported = read_history(path)
    compiled = registry.get(exported.workflow_name)
    if compiled is None:
        raise UnknownWorkflowTypeError(exported.workflow_name, "the --app module", list(registry))
    return replay_history(compiled, registry, exported.record(), exported.events)
