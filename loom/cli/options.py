"""What every `loom` command shares: options, error rendering, output, app loading.

stdout carries results only (rich tables on a terminal, plain tab-separated text otherwise,
`--json` on every read command); errors are one `ErrorType: message` line on stderr with exit 1
(a traceback only with `--debug` / LOOM_DEBUG=1); usage errors exit 2.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal as os_signal  # `signal` is the command below
import sqlite3
import sys
import traceback
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from loom._json import JSON
from loom.exceptions import LoomError
from loom.store import Store, WorkflowRecord

if TYPE_CHECKING:
    pass

DEFAULT_DATABASE = "./loom.db"
DEFAULT_LIST_LIMIT = 50
_T = TypeVar("_T")


STOP_SIGNALS = {os_signal.SIGINT, os_signal.SIGTERM}


class DatabaseNotFoundError(LoomError):
    """A read command was pointed at a database file that does not exist."""

    def __init__(self, database: str) -> None:
        self.database = database
        super().__init__(
            f"database {database!r} does not exist; create it with `loom init --db {database}` "
            f"or point --db / LOOM_DATABASE at an existing one"
        )


class InvalidInputError(LoomError):
    """A JSON option (`--input`, `--payload`) could not be read or parsed."""

    def __init__(self, option: str, problem: str) -> None:
        self.option = option
        super().__init__(
            f"{option} {problem}; pass a JSON literal such as '{{\"key\": 1}}' or @path/to.json"
        )


class UnknownWorkflowTypeError(LoomError):
    """No @loom.workflow with this name is defined in the --app module."""

    def __init__(self, name: str, app: str, known: Sequence[str]) -> None:
        self.name = name
        super().__init__(
            f"no workflow named {name!r} in {app} (defined: {', '.join(sorted(known)) or 'none'});"
            f" check the @loom.workflow(name=...) or the --app module"
        )


# -- errors: rendered once, for every command of the group --------------------------------


def is_debug(ctx: click.Context) -> bool:
    obj = ctx.find_root().obj
    if isinstance(obj, dict) and obj.get("debug"):
        return True
    return os.environ.get("LOOM_DEBUG", "") not in ("", "0", "false")


def render_error(ctx: click.Context, err: BaseException) -> NoReturn:
    """Print `ErrorType: message` (one line) on stderr, a traceback first in debug; exit 1."""
    if is_debug(ctx):
        traceback.print_exception(err, file=sys.stderr)
    error_type = type(err).__name__
    if not isinstance(err, LoomError):  # registry/sandbox errors carry their stable name
        error_type = str(getattr(err, "error_type", error_type))
    message = " ".join(str(err).split())
    click.echo(f"{error_type}: {message}", err=True)
    ctx.exit(1)
    raise AssertionError("unreachable")  # ctx.exit raises


def _operational_errors() -> tuple[type[BaseException], ...]:
    import asyncpg

    from activity_registry import RegistryError
    from wasm_activities import SandboxError

    database_errors = (sqlite3.Error, asyncpg.PostgresError, asyncpg.InterfaceError)
    return (LoomError, RegistryError, SandboxError, *database_errors, OSError)


def render_operational(ctx: click.Context, err: Exception) -> None:
    """One line for an operational error of any subcommand (exit 1); others pass on."""
    if isinstance(err, _operational_errors()):
        render_error(ctx, err)


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


def json_option(command: click.decorators.FC) -> click.decorators.FC:
    return click.option(
        "--json", "as_json", is_flag=True, help="Print JSON (stable snake_case keys)."
    )(command)


# -- shared plumbing for commands ------------------------------------------------------------


def run(operation: Callable[[], Awaitable[_T]]) -> _T:
    """One `asyncio.run` per command."""
    return asyncio.run(_call(operation))


async def _call(operation: Callable[[], Awaitable[_T]]) -> _T:
    return await operation()


def require_database(database: str) -> str:
    """Read commands never create a database: a missing file is an error, not an empty one."""
    if "://" not in database and not Path(database).expanduser().exists():
        raise DatabaseNotFoundError(database)
    return database


def read_json(value: str, option: str) -> JSON:
    """A JSON literal, `@file` or `-` (stdin)."""
    if value == "-":
        text = sys.stdin.read()
    elif value.startswith("@"):
        try:
            text = Path(value[1:]).read_text(encoding="utf-8")
        except OSError as err:
            problem = f"file {value[1:]!r} cannot be read ({err.strerror})"
            raise InvalidInputError(option, problem) from err
    else:
        text = value
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise InvalidInputError(option, f"is not valid JSON ({err})") from err


def echo_json(value: JSON) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False))


def when(unix_ms: int | None) -> str:
    if not unix_ms:
        return "-"
    return datetime.fromtimestamp(unix_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def is_terminal() -> bool:
    return sys.stdout.isatty()


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A rich table on a terminal; tab-separated lines (header first) otherwise."""
    if is_terminal():
        from rich.console import Console
        from rich.table import Table

        table = Table(box=None, header_style="bold")
        for header in headers:
            table.add_column(header, overflow="fold")
        for row in rows:
            table.add_row(*row)
        Console().print(table)
        return
    for row in (headers, *rows):
        click.echo("\t".join(" ".join(cell.split()) for cell in row))


def print_fields(fields: Sequence[tuple[str, str]]) -> None:
    """`key  value` pairs: a rich grid on a terminal, `key: value` lines otherwise."""
    if is_terminal():
        from rich.console import Console
        from rich.table import Table

        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold", no_wrap=True)
        grid.add_column(overflow="fold")
        for key, value in fields:
            grid.add_row(key, value)
        Console().print(grid)
        return
    for key, value in fields:
        click.echo(f"{key}: {value}")


def load_app(spec: str) -> tuple[list[Any], list[Any]]:
    """Import `pkg.module` and collect the workflows and activities it defines."""
    import importlib

    from loom.activity import Activity
    from loom.workflow import Workflow

    if spec.endswith(".json"):
        return definition_file_app(spec)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(spec)
    except ImportError as err:
        raise click.BadParameter(f"cannot import {spec!r}: {err}", param_hint="--app") from err
    workflows = [
        value
        for value in vars(module).values()
        if isinstance(value, type)
        and issubclass(value, Workflow)
        and value is not Workflow
        and value.__dict__.get("__loom_info__") is not None
    ] + app_definitions(module)
    activities = [value for value in vars(module).values() if isinstance(value, Activity)]
    if not workflows and not activities:
        raise click.UsageError(f"module {spec!r} defines no @loom.workflow or @loom.activity")
    return workflows, activities


def open_store(database: str, *, create: bool = False) -> Store:
    from loom.client import get_store

    try:
        return get_store(database if create else require_database(database))
    except ValueError as err:  # an unsupported URL scheme: a bad --db value, not a failure
        raise click.BadParameter(str(err), param_hint="--db") from err


def _step_label(record: WorkflowRecord) -> str:
    number = min(record.step_index + 1, record.total_steps)
    return f"{number}/{record.total_steps} {record.current_step or ''}".rstrip()


def _compact(value: JSON) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def app_definitions(module: ModuleType) -> list[Any]:
    """The definitions a `--app` module loaded (`x = loom.wdl.load(...)`), as workflow
    classes beside its `@loom.workflow` ones."""
    from loom.wdl import CompiledDefinition

    return [v.cls for v in vars(module).values() if isinstance(v, CompiledDefinition)]


def definition_file_app(path: str) -> tuple[list[Any], list[Any]]:
    """`--app FILE.json`: one definition and no native activities (it calls registered
    WASM activities, or Python workflows another worker serves)."""
    from loom.wdl import load

    return [load(path).cls], []
