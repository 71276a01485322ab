"""`loom activity register|list|show|run|remove`: thin commands over `activity_registry.Registry`.

Results go to stdout (rich for people, `--json` for scripts); errors are one `ErrorType: message`
line on stderr with exit 1 (a traceback only with `--debug` / LOOM_DEBUG=1); usage errors exit 2.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.json import JSON as RichJSON
from rich.table import Table

from activity_registry import (
    ActivityVersion,
    GrantsWidenedError,
    Registry,
    RegistryError,
    parse_spec,
)
from activity_registry.version_range import parse_version
from loom.cli.options import (
    DatabaseNotFoundError,
    database_option,
    open_store,
    render_error,
    require_database,
)
from loom.exceptions import BreakerNotFoundError
from wasm_activities import RunResult, SandboxError

__all__ = ["activity"]

_T = TypeVar("_T")


def _execute(
    ctx: click.Context,
    database: str,
    operation: Callable[[Registry], Awaitable[_T]],
    *,
    create: bool = False,
) -> _T:
    """Run one registry operation under a single `asyncio.run`, mapping typed errors to exit 1.

    Only `register` creates a database: anything else pointed at a mistyped path would
    otherwise leave an empty database there and report nothing registered."""
    if not create:
        try:
            require_database(database)
        except DatabaseNotFoundError as err:
            render_error(ctx, err)

    async def main() -> _T:
        async with Registry(database) as registry:
            return await operation(registry)

    try:
        return asyncio.run(main())
    except GrantsWidenedError as err:
        click.echo(f"{err.ref} asks for more than {err.previous}:", err=True)
        for line in err.widened:
            click.echo(f"  {line}", err=True)
        render_error(ctx, err)
    except (RegistryError, SandboxError, sqlite3.Error) as err:
        render_error(ctx, err)


def _spec_argument(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        parse_spec(value)
    except ValueError as err:
        raise click.BadParameter(str(err)) from err
    return value


def _exact_argument(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, str]:
    name, sep, version = value.partition("@")
    try:
        parse_spec(name)
        parse_version(version)
    except ValueError as err:
        raise click.BadParameter(f"expected NAME@VERSION with an exact version: {err}") from err
    if not sep:  # pragma: no cover - parse_version("") already failed
        raise click.BadParameter("expected NAME@VERSION")
    return name, version


def _record(activity: ActivityVersion) -> dict[str, Any]:
    """The stable `--json` shape of one version (snake_case keys)."""
    return {"ref": activity.ref, **activity.model_dump(mode="json")}


def _when(unix_ms: int) -> str:
    return datetime.fromtimestamp(unix_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=False))


# Built explicitly (not with @click.group) so its type is declared: loom.cli imports this
# module at its bottom, and a decorated name inside that import cycle has no inferable type.
activity: click.Group = click.Group(
    "activity", help="Register, inspect, run and remove versioned activities."
)


@activity.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option(
    "--approve-grants", is_flag=True, help="Approve grants not yet approved for the name."
)
@database_option
@click.pass_context
def register(ctx: click.Context, path: Path, approve_grants: bool, database: str) -> None:
    """Register PATH: an activity.toml, or the .wasm beside one.

    Prints `name@version sha256:<digest>`. Registering the same version with the same bytes
    again changes nothing; other bytes under an existing version are refused.
    """
    result = _execute(
        ctx,
        database,
        lambda registry: registry.register(path, approve_grants=approve_grants),
        create=True,
    )
    if result.widened:
        click.echo(f"approved wider grants for {result.activity.ref}:", err=True)
        for line in result.widened:
            click.echo(f"  {line}", err=True)
    if not result.created:
        click.echo(f"{result.activity.ref} is already registered; nothing changed", err=True)
    click.echo(f"{result.activity.ref} sha256:{result.activity.sha256}")


@activity.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@database_option
@click.pass_context
def list_(ctx: click.Context, as_json: bool, database: str) -> None:
    """List every registered version, WebAssembly and native."""
    activities = _execute(ctx, database, lambda registry: registry.list())
    if as_json:
        _echo_json([_record(a) for a in activities])
        return
    if not activities:
        click.echo("no activities registered; add one with `loom activity register PATH`", err=True)
        return
    table = Table(box=None, header_style="bold")
    for column in ("NAME", "VERSION", "ABI", "SHA256", "REGISTERED (UTC)"):
        table.add_column(column, no_wrap=True)
    table.add_column("DESCRIPTION")
    for item in activities:
        sha = item.sha256[:12] if item.sha256 else "-"
        table.add_row(
            item.name, item.version, item.abi, sha, _when(item.registered_at), item.description
        )
    Console().print(table)


@activity.command()
@click.argument("spec", callback=_spec_argument, metavar="NAME[@RANGE]")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a summary.")
@database_option
@click.pass_context
def show(ctx: click.Context, spec: str, as_json: bool, database: str) -> None:
    """Show the version NAME[@RANGE] resolves to.

    Includes its schemas, limits, grants and retry policy.
    """

    async def operation(registry: Registry) -> tuple[ActivityVersion, dict[str, Any]]:
        item = await registry.resolve(spec)
        return item, await _egress_totals(database, item.name)

    item, egress = _execute(ctx, database, operation)
    breaker = asyncio.run(_breaker_of(database, item.name))
    if as_json:
        _echo_json({**_record(item), "circuit_breaker_state": breaker, "egress": egress})
        return
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    grid.add_row("activity", item.ref)
    grid.add_row("abi", item.abi)
    grid.add_row("sha256", item.sha256 or "- (native: runs in the worker)")
    grid.add_row("description", item.description or "-")
    grid.add_row("registered", f"{_when(item.registered_at)} UTC")
    grid.add_row("limits", _pairs(item.limits.model_dump()))
    grid.add_row("grants", _grants(item))
    grid.add_row("retry", _pairs(item.retry.model_dump()))
    if item.circuit_breaker is not None or breaker is not None:
        policy = item.circuit_breaker.model_dump() if item.circuit_breaker else {}
        grid.add_row("circuit breaker", _breaker_line(policy, breaker))
    grid.add_row("egress", _egress_lines(egress))
    grid.add_row("input schema", RichJSON(json.dumps(item.input_schema)))
    grid.add_row("output schema", RichJSON(json.dumps(item.output_schema)))
    Console().print(grid)


async def _breaker_of(database: str, name: str) -> dict[str, Any] | None:
    """The breaker's shared state in the engine's tables (None: it never failed)."""
    found = [b for b in await open_store(database).list_breakers() if b.activity_name == name]
    return found[0].to_json() if found else None


def _breaker_line(policy: dict[str, Any], state: dict[str, Any] | None) -> str:
    if state is None:
        return f"closed (no failure recorded); {_pairs(policy)}"
    line = f"{state['state']}, {state['recent_failures']} recent failure(s), "
    line += f"opened {state['times_opened']} time(s)"
    if state["half_open_at"] is not None:
        line += f", half-open at {_when(state['half_open_at'])} UTC"
    return f"{line}; {_pairs(policy)}" if policy else line


async def _egress_totals(database: str, name: str) -> dict[str, Any]:
    """Totals of the egress journal per version, from the workflows' history."""
    from loom.client import get_store

    return await get_store(database).egress_totals(name)


def _egress_lines(totals: dict[str, Any]) -> str:
    if not totals:
        return "no sandboxed HTTP requests recorded"
    return "\n".join(
        f"{version}: {t['requests']} requests in {t['calls']} calls, {t['bytes_out']} B out, "
        f"{t['bytes_in']} B in, {t['duration_ms'] / 1000:.2f} s, to {', '.join(t['hosts'])}"
        for version, t in sorted(totals.items())
    )


def _pairs(values: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value}" for key, value in values.items())


def _grants(item: ActivityVersion) -> str:
    grants = item.grants
    lines = [
        f"{key}: {', '.join(values)}"
        for key, values in (("net", grants.net), ("secrets", grants.secrets), ("env", grants.env))
        if values
    ]
    if grants.config:
        lines.append(f"config: {_pairs(grants.config)}")
    lines += [f"fs: {g.host} -> {g.guest} ({g.mode})" for g in grants.fs]
    return "\n".join(lines) or "none"


def _read_input(value: str) -> Any:
    """`--input`: a JSON literal, `@file` or `-` (stdin)."""
    if value == "-":
        text = sys.stdin.read()
    elif value.startswith("@"):
        try:
            text = Path(value[1:]).read_text(encoding="utf-8")
        except OSError as err:
            raise click.BadParameter(
                f"cannot read {value[1:]}: {err.strerror}", param_hint="--input"
            ) from err
    else:
        text = value
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise click.BadParameter(f"not valid JSON: {err}", param_hint="--input") from err


@activity.command()
@click.argument("spec", callback=_spec_argument, metavar="NAME[@RANGE]")
@click.option(
    "--input",
    "input_text",
    default="{}",
    show_default=True,
    metavar="JSON|@FILE|-",
    help="Input JSON: a literal, @path to a file, or - for stdin.",
)
@click.option(
    "-v", "--verbose", is_flag=True, help="Also print the guest's logs and usage to stderr."
)
@database_option
@click.pass_context
def run(ctx: click.Context, spec: str, input_text: str, verbose: bool, database: str) -> None:
    """Run NAME[@RANGE] once, outside any workflow.

    Prints the output JSON alone on stdout. Granted secrets are read by name from this
    process's environment.
    """
    value = _read_input(input_text)

    async def operation(registry: Registry) -> RunResult:
        item = await registry.resolve(spec)
        if item.is_native:
            raise RegistryError(
                f"{item.ref} is a native activity: it runs inside a worker (`loom worker`), "
                "not from `loom activity run`"
            )
        missing = [name for name in item.grants.secrets if name not in os.environ]
        if missing:
            click.echo(f"warning: granted secrets not set here: {', '.join(missing)}", err=True)
        secrets = {name: os.environ[name] for name in item.grants.secrets if name in os.environ}
        return await registry.run(item, value, secrets=secrets)

    result = _execute(ctx, database, operation)
    if verbose:
        if result.logs:
            click.echo(result.logs.rstrip("\n"), err=True)
        click.echo(f"usage: {result.usage.model_dump_json()}", err=True)
    click.echo(json.dumps(result.output))


@activity.command()
@click.argument("ref", callback=_exact_argument, metavar="NAME@VERSION")
@database_option
@click.pass_context
def remove(ctx: click.Context, ref: tuple[str, str], database: str) -> None:
    """Remove one version.

    Its module bytes are deleted once no other version uses them.
    """
    name, version = ref
    _execute(ctx, database, lambda registry: registry.remove(name, version))
    click.echo(f"removed {name}@{version}")


@activity.command(name="reset-breaker")
@click.argument("name")
@database_option
@click.pass_context
def reset_breaker(ctx: click.Context, name: str, database: str) -> None:
    """Close the circuit breaker of activity NAME by hand, for every worker.

    Calls it deferred run at once. An unknown name is an error (exit 1).
    """

    async def operation(registry: Registry) -> bool:
        store = open_store(database)
        if await store.reset_breaker(name):
            return True
        known = sorted({b.activity_name for b in await store.list_breakers()})
        declared = [a for a in await registry.list() if a.name == name and a.circuit_breaker]
        if not declared:
            raise BreakerNotFoundError(name, known)
        return False

    if _execute(ctx, database, operation):
        click.echo(f"circuit breaker of {name} closed; deferred calls run now")
    else:
        click.echo(f"circuit breaker of {name} is closed (no failure recorded); nothing to reset")
