"""The `loom` command line: one click group, nested groups per noun; commands stay thin.

Each module holds the commands of one noun; `options` holds what they all share (options,
error rendering, output helpers, app loading). Nothing here imports this package back.
"""

from __future__ import annotations

import os

import click

from loom.cli import activities, actors, doctor, history, replay, wdl, web, workflows
from loom.cli.options import LoomGroup

__all__ = ["main"]


@click.group(cls=LoomGroup)
@click.option("--debug", is_flag=True, envvar="LOOM_DEBUG", help="Show tracebacks on errors.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Loom: durable workflows with sandboxed WebAssembly activities."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug or bool(os.environ.get("LOOM_DEBUG"))


for command in (
    workflows.init,
    workflows.worker,
    workflows.start,
    workflows.list_,
    workflows.inspect,
    workflows.signal,
    workflows.cancel,
    workflows.stats,
    workflows.logs,
    replay.replay,
    doctor.doctor,
    activities.activity,
    actors.actor,
    history.history_group,
    wdl.wdl,
    web.web,
):
    main.add_command(command)
