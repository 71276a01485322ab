"""The `loom` command line: one click group, nested groups per noun; commands stay thin."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import click

DEFAULT_DATABASE = "./loom.db"


def database_option(command: click.decorators.FC) -> click.decorators.FC:
    """`--db PATH`, falling back to LOOM_DATABASE, then ./loom.db."""
    return click.option(
        "--db",
        "database",
        envvar="LOOM_DATABASE",
        default=DEFAULT_DATABASE,
        show_default=True,
        help="Database path or URL (env LOOM_DATABASE).",
    )(command)


@click.group()
@click.option("--debug", is_flag=True, envvar="LOOM_DEBUG", help="Show tracebacks on errors.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Loom: durable workflows with sandboxed WebAssembly activities."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug or bool(os.environ.get("LOOM_DEBUG"))


from loom._activity_cli import activity  # noqa: E402 - needs database_option defined above

main.add_command(activity)


def _load_app(spec: str) -> tuple[list[Any], list[Any]]:
    """Import `pkg.module` and collect the workflows and activities it defines."""
    import importlib

    from loom.activity import Activity
    from loom.workflow import Workflow

    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module = importlib.import_module(spec)
    workflows = [
        value
        for value in vars(module).values()
        if isinstance(value, type)
        and issubclass(value, Workflow)
        and value is not Workflow
        and value.__dict__.get("__loom_info__") is not None
    ]
    activities = [value for value in vars(module).values() if isinstance(value, Activity)]
    if not workflows and not activities:
        raise click.UsageError(f"module {spec!r} defines no @loom.workflow or @loom.activity")
    return workflows, activities


@main.command()
@click.option("--app", "app", required=True, help="Module defining workflows and activities.")
@click.option("--concurrency", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--poll-interval", type=click.FloatRange(min=0.01), default=0.5, show_default=True)
@click.option("--lease-seconds", type=click.FloatRange(min=0.1), default=30.0, show_default=True)
@database_option
def worker(
    app: str, concurrency: int, poll_interval: float, lease_seconds: float, database: str
) -> None:
    """Run a worker until SIGINT/SIGTERM."""
    from loom.worker import Worker

    workflows, activities = _load_app(app)
    instance = Worker(
        workflows=workflows,
        activities=activities,
        concurrency=concurrency,
        poll_interval=poll_interval,
        lease_seconds=lease_seconds,
        database=database,
    )
    click.echo(
        f"worker {instance.worker_id} serving {len(workflows)} workflow(s), "
        f"{len(activities)} activity(ies) from {database}",
        err=True,
    )
    asyncio.run(instance.run())
