"""The `loom` command line: one click group, nested groups per noun; commands stay thin."""

from __future__ import annotations

import os

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
