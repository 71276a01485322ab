"""The `loom` command line: one click group, nested groups per noun; commands stay thin.

Each module holds the commands of one noun; `options` holds what they all share (options,
error rendering, output helpers, app loading). Nothing here imports this package back.

Command modules load only when their command runs: `loom --help` lists the table below
without importing any of them (eagerly they pulled in wasmtime, jsonschema, pydantic and
asyncpg: 0.4-0.8 s before any output). tests/loom/test_cli.py checks the table against the
commands' own help.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

import click

__all__ = ["COMMANDS", "main"]

COMMANDS: dict[str, tuple[str, str, str]] = {
    # name: (module in loom.cli, attribute, the short help `loom --help` shows)
    "activity": (
        "activities",
        "activity",
        "Register, inspect, run and remove versioned activities.",
    ),
    "actor": (
        "actors",
        "actor",
        "Durable actors: one keyed object per (type, key) that handles messages in order.",
    ),
    "cancel": (
        "workflows",
        "cancel",
        "Request cancellation of workflow ID; it stops at its next await.",
    ),
    "doctor": (
        "doctor",
        "doctor",
        "Check the database: settings, schema version, expired leases and stuck workflows.",
    ),
    "fork": (
        "recovery",
        "fork",
        "Start a new workflow from a copy of ID's history, so completed activities are not run "
        "again.",
    ),
    "history": ("history", "history_group", "Export workflow histories for replay tests."),
    "init": ("workflows", "init", "Create the database, or migrate it to the current schema."),
    "inspect": (
        "workflows",
        "inspect",
        "Show one workflow: status, current step, state and history.",
    ),
    "list": ("workflows", "list_", "List workflows, newest first."),
    "logs": (
        "workflows",
        "logs",
        "Print the log lines workflow ID wrote (ctx.logger) and activity retries.",
    ),
    "replay": (
        "replay",
        "replay",
        "Replay stored histories (or an exported FILE) against the current code and report "
        "non-determinism.",
    ),
    "resume": (
        "recovery",
        "resume",
        "Run SUSPENDED workflow ID again with the code the workers run now.",
    ),
    "schedule": (
        "schedules",
        "schedule_group",
        "Start workflows on a cron schedule (fired by the running workers).",
    ),
    "signal": (
        "workflows",
        "signal",
        "Send signal NAME to workflow ID (buffered until the workflow waits for it).",
    ),
    "start": (
        "workflows",
        "start",
        "Start workflow NAME (its @loom.workflow name, or a registered definition's "
        "NAME[@RANGE]); prints the workflow id.",
    ),
    "suspend": (
        "recovery",
        "suspend",
        "Park workflow ID: none of its code runs until `loom resume ID`.",
    ),
    "stats": (
        "workflows",
        "stats",
        "Workflow counts by status and the task queue (due, scheduled, leased, expired).",
    ),
    "wdl": (
        "wdl",
        "wdl",
        "Declarative workflow definitions (JSON): validate, register, list, show, draw.",
    ),
    "web": (
        "web",
        "web",
        "Serve the dashboard: live workflows, history, graphs, signals, stats, /metrics, /docs.",
    ),
    "worker": (
        "workflows",
        "worker",
        "Run a worker until SIGINT/SIGTERM (in-flight tasks finish, leases are released).",
    ),
}


class _Commands(click.Group):
    """Subcommands imported on use; operational errors of any of them become one line."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, attribute, _ = target
        command: click.Command = getattr(importlib.import_module(f"loom.cli.{module}"), attribute)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        limit = formatter.width - 6 - max(len(name) for name in COMMANDS)
        rows = [(name, _shorten(text, limit)) for name, (_, _, text) in sorted(COMMANDS.items())]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as err:
            from loom.cli.options import render_operational

            render_operational(ctx, err)
            raise


def _shorten(text: str, limit: int) -> str:
    """As click shortens a command's help for the listing (the first sentence, cut at a
    word with '...' when longer than `limit`)."""
    return click.Command(None, help=text).get_short_help_str(max(limit, 45))


@click.group(cls=_Commands)
@click.option("--debug", is_flag=True, envvar="LOOM_DEBUG", help="Show tracebacks on errors.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Loom: durable workflows with sandboxed WebAssembly activities."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug or bool(os.environ.get("LOOM_DEBUG"))
