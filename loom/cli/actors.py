"""`loom actor list|send|ask|inspect`: durable actors from the command line.

Messages go through the API users call (`loom.send`, `loom.ask`) by type name, so no `--app`
is needed: a worker serving the type handles them.
"""

from __future__ import annotations

from typing import Any

import click

from loom._json import JSON
from loom.activation import ACTOR_PREFIX
from loom.cli.options import (
    DEFAULT_LIST_LIMIT,
    database_option,
    echo_json,
    json_option,
    open_store,
    print_fields,
    print_table,
    read_json,
    run,
    when,
)
from loom.history import Event
from loom.store import WorkflowRecord
from loom.summary import actor_summary

__all__ = ["actor"]


@click.group()
def actor() -> None:
    """Durable actors: one keyed object per (type, key) that handles messages in order."""


def _payload_option(command: Any) -> Any:
    return click.option(
        "--payload", default="null", help="The message payload: JSON, or @path/to.json."
    )(command)


@actor.command(name="list")
@click.option("--type", "actor_type", help="Only actors of this type.")
@click.option("--limit", default=DEFAULT_LIST_LIMIT, show_default=True, type=int)
@json_option
@database_option
def list_(actor_type: str | None, limit: int, as_json: bool, database: str) -> None:
    """Actors by id: type, key, status, messages handled (up to the last snapshot)."""
    name = None if actor_type is None else ACTOR_PREFIX + actor_type
    records = run(lambda: open_store(database).list_actors(workflow_name=name, limit=limit))
    summaries = [actor_summary(record) for record in records]
    if as_json:
        echo_json({"actors": summaries})
        return
    rows = [
        (
            str(s["actor_type"]),
            str(s["key"]),
            str(s["status"]),
            str(s["snapshots"]),
            when(int(str(s["updated_at"]))),
        )
        for s in summaries
    ]
    print_table(["TYPE", "KEY", "STATUS", "SNAPSHOTS", "UPDATED"], rows)
    if not rows:
        click.echo("no actors yet; the first `loom actor send TYPE KEY ...` creates one", err=True)


@actor.command()
@click.argument("actor_type", metavar="TYPE")
@click.argument("key")
@click.argument("handler")
@_payload_option
@click.option("--owner", help="Who an actor this message creates works for (loom.get_progress).")
@database_option
def send(
    actor_type: str, key: str, handler: str, payload: str, owner: str | None, database: str
) -> None:
    """Put a message for HANDLER in the mailbox of actor TYPE KEY (created if absent)."""
    from loom.actor import send as send_message

    value = read_json(payload, "--payload")
    open_store(database, create=True)
    run(lambda: send_message(actor_type, key, handler, value, owner=owner, database=database))
    click.echo(f"sent {handler} to {actor_type}[{key}]", err=True)


@actor.command()
@click.argument("actor_type", metavar="TYPE")
@click.argument("key")
@click.argument("handler")
@_payload_option
@click.option(
    "--timeout", default=60.0, show_default=True, type=float, help="Seconds to wait for it."
)
@database_option
def ask(
    actor_type: str, key: str, handler: str, payload: str, timeout: float, database: str
) -> None:
    """Send a message and print the handler's reply as JSON (exit 1 if the handler raised)."""
    from loom.actor import ask as ask_actor

    value = read_json(payload, "--payload")
    open_store(database, create=True)
    reply = run(
        lambda: ask_actor(actor_type, key, handler, value, timeout=timeout, database=database)
    )
    echo_json(reply)


@actor.command()
@click.argument("actor_type", metavar="TYPE")
@click.argument("key")
@json_option
@database_option
def inspect(actor_type: str, key: str, as_json: bool, database: str) -> None:
    """An actor's status, state, stored events and snapshots."""
    from loom.exceptions import WorkflowNotFoundError
    from loom.mailbox import actor_id

    workflow_id = actor_id(actor_type, key)

    async def operation() -> tuple[WorkflowRecord, list[Event]]:
        store = open_store(database)
        record = await store.get_workflow(workflow_id)
        if record is None:
            raise WorkflowNotFoundError(workflow_id)
        return record, await store.list_events(workflow_id)

    record, events = run(operation)
    summary = actor_summary(record, events)
    if as_json:
        echo_json(summary)
        return
    fields = [(name, _text(summary[name])) for name in _INSPECT_FIELDS if name in summary]
    print_fields(fields)


_INSPECT_FIELDS = (
    "actor_type",
    "key",
    "workflow_id",
    "status",
    "handled",
    "events",
    "snapshots",
    "state",
    "error",
)


def _text(value: JSON) -> str:
    import json

    return value if isinstance(value, str) else json.dumps(value)
