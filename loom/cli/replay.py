"""`loom replay`: stored (or exported) histories against the current code, before a deploy."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from loom._export import is_history_file, read_history
from loom._json import JSON
from loom.cli.options import (
    UnknownWorkflowTypeError,
    database_option,
    echo_json,
    json_option,
    open_store,
    run,
)
from loom.cli.workflows import compiled_workflows, find_workflow
from loom.history import Event
from loom.store import Store, WorkflowRecord

if TYPE_CHECKING:
    from loom.workflow import CompiledWorkflow


def replay_history(
    compiled: CompiledWorkflow[Any, Any],
    registry: dict[str, CompiledWorkflow[Any, Any]],
    record: WorkflowRecord,
    events: list[Event],
) -> dict[str, JSON]:
    """Replay one stored history against the current code; the result says what diverged."""
    from loom.exceptions import NonDeterministicWorkflowError
    from loom.replay import WorkflowRun

    outcome: dict[str, JSON] = {
        "workflow_id": record.workflow_id,
        "workflow_name": record.workflow_name,
        "status": record.status.value,
        "result": "ok",
    }
    # replay_until = the whole history: the run is silent (no logs) and issues nothing new
    # that matters; the activation it builds is never written anywhere.
    run_ = WorkflowRun(
        compiled, record.workflow_id, replay_until=record.last_sequence, registry=registry
    )
    try:
        run_.apply(events)
        failure = run_.failure
    finally:
        run_.close()
    if isinstance(failure, NonDeterministicWorkflowError):
        outcome |= {
            "result": "non_deterministic",
            "position": failure.position,
            "expected": failure.expected,
            "actual": failure.actual,
            "message": str(failure),
        }
    return outcome


async def _replay_all(
    store: Store,
    registry: dict[str, CompiledWorkflow[Any, Any]],
    workflow_id: str | None,
    advance: Callable[[int], None],
) -> list[dict[str, JSON]]:
    if workflow_id is not None:
        records = [await find_workflow(store, workflow_id)]
    else:
        records = await store.list_workflows(limit=sys.maxsize >> 1)
    advance(len(records))
    outcomes: list[dict[str, JSON]] = []
    for record in records:
        compiled = registry.get(record.workflow_name)
        if compiled is None:
            if workflow_id is not None:
                raise UnknownWorkflowTypeError(
                    record.workflow_name, "the --app module", list(registry)
                )
            outcomes.append(
                {
                    "workflow_id": record.workflow_id,
                    "workflow_name": record.workflow_name,
                    "status": record.status.value,
                    "result": "skipped",
                    "message": "workflow type not defined in the --app module",
                }
            )
        else:
            events = await store.list_events(record.workflow_id)
            outcomes.append(replay_history(compiled, registry, record, events))
        advance(-1)
    return outcomes


@click.command()
@click.argument("workflow_id", metavar="ID|FILE", required=False)
@click.option("--all", "replay_all", is_flag=True, help="Replay every stored workflow.")
@click.option("--app", "app", required=True, help="Module defining the current workflow code.")
@json_option
@database_option
def replay(
    workflow_id: str | None, replay_all: bool, app: str, as_json: bool, database: str
) -> None:
    """Replay stored histories (or an exported FILE) against the current code and report
    non-determinism.

    Changes nothing in the database. Exit 1 when any history no longer matches the code.
    """
    if (workflow_id is None) == (not replay_all):
        raise click.UsageError("give a workflow ID or --all (not both)")
    registry = compiled_workflows(app)
    with _ReplayProgress(enabled=replay_all) as progress:

        async def operation() -> list[dict[str, JSON]]:
            if workflow_id is not None and is_history_file(workflow_id):
                return [replay_file(workflow_id, registry)]  # a `loom history export` file
            return await _replay_all(open_store(database), registry, workflow_id, progress.advance)

        outcomes = run(operation)
    mismatches = [o for o in outcomes if o["result"] == "non_deterministic"]
    if as_json:
        echo_json(
            {
                "replayed": sum(1 for o in outcomes if o["result"] != "skipped"),
                "ok": sum(1 for o in outcomes if o["result"] == "ok"),
                "non_deterministic": len(mismatches),
                "skipped": sum(1 for o in outcomes if o["result"] == "skipped"),
                "workflows": outcomes,
            }
        )
    else:
        _print_replay(outcomes)
    if mismatches:
        sys.exit(1)


def _print_replay(outcomes: list[dict[str, JSON]]) -> None:
    for outcome in outcomes:
        if outcome["result"] != "ok":
            detail = outcome.get("message", "")
            click.echo(f"{outcome['result']}\t{outcome['workflow_id']}\t{detail}")
    counts = {
        result: sum(1 for o in outcomes if o["result"] == result)
        for result in ("ok", "non_deterministic", "skipped")
    }
    click.echo(
        f"replayed {counts['ok'] + counts['non_deterministic']} workflow(s): {counts['ok']} ok, "
        f"{counts['non_deterministic']} non-deterministic, {counts['skipped']} skipped"
    )


class _ReplayProgress:
    """A rich progress bar on stderr (only when stderr is a terminal); never touches stdout."""

    def __init__(self, *, enabled: bool) -> None:
        from rich.console import Console
        from rich.progress import Progress

        console = Console(stderr=True)
        self._bar = Progress(console=console, transient=True, disable=not enabled)
        self._task = self._bar.add_task("replaying", total=None)

    def advance(self, delta: int) -> None:
        """A positive delta sets the total; -1 marks one workflow done."""
        if delta > 0:
            self._bar.update(self._task, total=delta)
        else:
            self._bar.advance(self._task)

    def __enter__(self) -> _ReplayProgress:
        self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.stop()


def replay_file(path: str, registry: dict[str, CompiledWorkflow[Any, Any]]) -> dict[str, JSON]:
    """`loom replay FILE`: one exported history against the --app code, no database."""
    exported = read_history(path)
    compiled = registry.get(exported.workflow_name)
    if compiled is None:
        raise UnknownWorkflowTypeError(exported.workflow_name, "the --app module", list(registry))
    return replay_history(compiled, registry, exported.record(), exported.events)
