"""The `loom` command line: one click group, nested groups per noun; commands stay thin.

stdout carries results only (rich tables on a terminal, plain tab-separated text otherwise,
`--json` on every read command); errors are one `ErrorType: message` line on stderr with exit 1
(a traceback only with `--debug` / LOOM_DEBUG=1); usage errors exit 2.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal as os_signal  # `signal` is the command below
import sqlite3
import sys
import traceback
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from loom._json import JSON
from loom.exceptions import LoomError, WorkflowClosedError, WorkflowNotFoundError
from loom.history import Event, WorkflowStatus
from loom.store import Store, WorkflowRecord

if TYPE_CHECKING:
    from loom.store import Diagnosis, StoreStats
    from loom.workflow import CompiledWorkflow

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


class LoomGroup(click.Group):
    """A click group that turns the operational errors of any subcommand into one line."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except _operational_errors() as err:
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


@click.group(cls=LoomGroup)
@click.option("--debug", is_flag=True, envvar="LOOM_DEBUG", help="Show tracebacks on errors.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Loom: durable workflows with sandboxed WebAssembly activities."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug or bool(os.environ.get("LOOM_DEBUG"))


from loom._activity_cli import activity  # noqa: E402 - needs database_option defined above
from loom._export import is_history_file  # noqa: E402
from loom._history_cli import history_group, replay_file  # noqa: E402 - likewise
from loom._wdl_cli import app_definitions, definition_file_app, wdl  # noqa: E402
from loom._web_cli import web  # noqa: E402

main.add_command(activity)
main.add_command(history_group)
main.add_command(wdl)
main.add_command(web)


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


def workflow_json(record: WorkflowRecord, *, full: bool = False) -> dict[str, JSON]:
    """The stable `--json` shape of one workflow (snake_case keys)."""
    data: dict[str, JSON] = {
        "workflow_id": record.workflow_id,
        "workflow_name": record.workflow_name,
        "workflow_version": record.workflow_version,
        "status": record.status.value,
        "owner": record.owner,
        "agent": record.agent,
        "parent_id": record.parent_id,
        "current_step": record.current_step,
        "step_description": record.step_description,
        "step_number": min(record.step_index + 1, record.total_steps),
        "total_steps": record.total_steps,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
    }
    if full:
        from loom.progress import progress_message

        data |= {
            "message": progress_message(record),
            "input": record.input,
            "state": record.state,
            "error": record.error,
            "event_count": record.last_sequence,
        }
    return data


def event_json(event: Event) -> dict[str, JSON]:
    return {
        "sequence": event.sequence,
        "kind": event.kind.value,
        "payload": event.payload,
        "created_at": event.created_at,
    }


def _step_label(record: WorkflowRecord) -> str:
    number = min(record.step_index + 1, record.total_steps)
    return f"{number}/{record.total_steps} {record.current_step or ''}".rstrip()


def _compact(value: JSON) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


# -- commands ------------------------------------------------------------------------------


@main.command()
@database_option
def init(database: str) -> None:
    """Create the database, or migrate it to the current schema."""

    async def operation() -> int:
        return (await open_store(database, create=True).diagnose()).schema_version

    version = run(operation)
    click.echo(f"database {database} ready (schema version {version})")


@main.command()
@click.option("--app", "app", required=True, help="Module defining workflows and activities.")
@click.option(
    "--concurrency",
    "--workers",
    "-w",
    "concurrency",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="Tasks run at once (--workers/-w is the loom-core spelling).",
)
@click.option(
    "--poll-interval",
    "-p",
    type=click.FloatRange(min=0.01),
    default=0.5,
    show_default=True,
    help="Seconds between polls when no wakeup came.",
)
@click.option("--lease-seconds", type=click.FloatRange(min=0.1), default=30.0, show_default=True)
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    default="INFO",
    show_default=True,
    help="What the worker reports on stderr (store outages, failed tasks, recoveries).",
)
@database_option
def worker(
    app: str,
    concurrency: int,
    poll_interval: float,
    lease_seconds: float,
    log_level: str,
    database: str,
) -> None:
    """Run a worker until SIGINT/SIGTERM (in-flight tasks finish, leases are released)."""
    from loom.worker import Worker

    # An operator must see a store outage and its recovery; without handlers Python
    # would print only warnings and above, unformatted.
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    workflows, activities = load_app(app)
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
    # run() turns SIGINT/SIGTERM into a graceful stop. Until its handlers are installed the
    # signals are held back (a Ctrl-C landing while asyncio.run built its loop left a broken
    # loop and a traceback); run() unblocks them, and one that arrived meanwhile stops it.
    with contextlib.suppress(KeyboardInterrupt):
        if hasattr(os_signal, "pthread_sigmask"):
            os_signal.pthread_sigmask(os_signal.SIG_BLOCK, STOP_SIGNALS)
        asyncio.run(instance.run())
    click.echo(f"worker {instance.worker_id} stopped", err=True)


def _compiled_workflows(app: str) -> dict[str, CompiledWorkflow[Any, Any]]:
    workflows, _ = load_app(app)
    compiled = [workflow.compile() for workflow in workflows]
    return {item.name: item for item in compiled}


@main.command()
@click.argument("name")
@click.option("--input", "input_text", default="{}", show_default=True, metavar="JSON|@FILE|-")
@click.option("--id", "workflow_id", help="Workflow id (an idempotency key); default: a UUID.")
@click.option("--owner", help="Who the workflow works for (see loom.get_progress).")
@click.option("--app", "app", required=True, help="Module defining the workflow.")
@database_option
def start(
    name: str,
    input_text: str,
    workflow_id: str | None,
    owner: str | None,
    app: str,
    database: str,
) -> None:
    """Start workflow NAME (its @loom.workflow name); prints the workflow id."""
    from loom.client import start_workflow

    workflows = _compiled_workflows(app)
    compiled = workflows.get(name)
    if compiled is None:
        raise UnknownWorkflowTypeError(name, app, list(workflows))
    value = read_json(input_text, "--input")
    try:
        compiled.encode_input(value)
    except TypeError as err:
        raise InvalidInputError("--input", f"does not fit: {err}") from err

    async def operation() -> str:
        open_store(database, create=True)
        handle = await start_workflow(
            compiled, value, workflow_id=workflow_id, owner=owner, database=database
        )
        return handle.workflow_id

    started = run(operation)
    click.echo(f"started {name} workflow {started}", err=True)
    click.echo(started)


@main.command(name="list")
@click.option(
    "--status",
    type=click.Choice([*(s.value for s in WorkflowStatus), "CANCELLED"], case_sensitive=False),
    help="Only workflows with this status (CANCELLED is read as CANCELED).",
)
@click.option("--name", help="Only workflows of this @loom.workflow name.")
@click.option("--owner", help="Only workflows of this owner.")
@click.option("--limit", type=click.IntRange(min=1), default=DEFAULT_LIST_LIMIT, show_default=True)
@json_option
@database_option
def list_(
    status: str | None,
    name: str | None,
    owner: str | None,
    limit: int,
    as_json: bool,
    database: str,
) -> None:
    """List workflows, newest first."""

    async def operation() -> list[WorkflowRecord]:
        return await open_store(database).list_workflows(
            status=WorkflowStatus(status) if status else None,
            name=name,
            owner=owner,
            limit=limit,
        )

    records = run(operation)
    if as_json:
        echo_json([workflow_json(record) for record in records])
        return
    if not records:
        click.echo("no workflows match; start one with `loom start NAME --app MODULE`", err=True)
        return
    print_table(
        ("WORKFLOW ID", "NAME", "STATUS", "STEP", "OWNER", "UPDATED (UTC)"),
        [
            (
                r.workflow_id,
                r.workflow_name,
                r.status.value,
                _step_label(r),
                r.owner or "-",
                when(r.updated_at),
            )
            for r in records
        ],
    )


async def _workflow(store: Store, workflow_id: str) -> WorkflowRecord:
    record = await store.get_workflow(workflow_id)
    if record is None:
        raise WorkflowNotFoundError(workflow_id)
    return record


@main.command()
@click.argument("workflow_id", metavar="ID")
@click.option("--events", "with_events", is_flag=True, help="Include the full event history.")
@json_option
@database_option
def inspect(workflow_id: str, with_events: bool, as_json: bool, database: str) -> None:
    """Show one workflow: status, current step, state and history."""

    async def operation() -> tuple[WorkflowRecord, list[Event]]:
        store = open_store(database)
        record = await _workflow(store, workflow_id)
        return record, await store.list_events(workflow_id)

    record, events = run(operation)
    if as_json:
        data = workflow_json(record, full=True)
        if with_events:
            data["events"] = [event_json(event) for event in events]
        echo_json(data)
        return
    _print_workflow(record, events)
    if with_events:
        click.echo()
        print_table(
            ("SEQ", "TIME (UTC)", "KIND", "DETAILS"),
            [
                (str(e.sequence), when(e.created_at), e.kind.value, _compact(e.payload))
                for e in events
            ],
        )


def _print_workflow(record: WorkflowRecord, events: list[Event]) -> None:
    from loom.progress import progress_message

    last = events[-1] if events else None
    fields = [
        ("workflow", record.workflow_id),
        ("name", f"{record.workflow_name} {record.workflow_version}"),
        ("status", record.status.value),
        ("step", f"{_step_label(record)} - {progress_message(record)}"),
        ("owner", record.owner or "-"),
        ("agent", record.agent or "-"),
        ("parent", record.parent_id or "-"),
        ("created", f"{when(record.created_at)} UTC"),
        ("updated", f"{when(record.updated_at)} UTC"),
        ("input", _compact(record.input)),
        ("state", _compact(record.state)),
    ]
    if record.error:
        fields.append(("error", f"{record.error.get('type')}: {record.error.get('message')}"))
    history = f"{len(events)} events"
    if last is not None:
        history += f", last {last.kind.value} at {when(last.created_at)} UTC"
    fields.append(("history", history))
    print_fields(fields)


@main.command()
@click.argument("workflow_id", metavar="ID")
@click.argument("name")
@click.option("--payload", default="null", show_default=True, metavar="JSON|@FILE|-")
@database_option
def signal(workflow_id: str, name: str, payload: str, database: str) -> None:
    """Send signal NAME to workflow ID (buffered until the workflow waits for it)."""
    from loom.client import get_handle

    value = read_json(payload, "--payload")

    async def operation() -> None:
        open_store(database)
        await get_handle(workflow_id, database=database).signal(name, value)

    run(operation)
    click.echo(f"sent signal {name!r} to {workflow_id}")


@main.command()
@click.argument("workflow_id", metavar="ID")
@click.option("--reason", help="Why; recorded in the history.")
@database_option
def cancel(workflow_id: str, reason: str | None, database: str) -> None:
    """Request cancellation of workflow ID; it stops at its next await."""

    async def operation() -> WorkflowStatus | None:
        store = open_store(database)
        record = await _workflow(store, workflow_id)
        if record.status.is_closed:
            return record.status
        if not await store.cancel_workflow(workflow_id, reason):
            return (await _workflow(store, workflow_id)).status
        return None

    closed = run(operation)
    if closed is WorkflowStatus.CANCELED:
        click.echo(f"workflow {workflow_id} was already cancelled")
    elif closed is not None:
        raise WorkflowClosedError(workflow_id, closed.value, "be cancelled")
    else:
        click.echo(f"cancellation requested for {workflow_id}")


@main.command()
@json_option
@database_option
def stats(as_json: bool, database: str) -> None:
    """Workflow counts by status and the task queue (due, scheduled, leased, expired)."""

    async def operation() -> StoreStats:
        return await open_store(database).collect_stats()

    result = run(operation)
    if as_json:
        echo_json({"workflows": result.workflows, "tasks": result.tasks})
        return
    print_table(("WORKFLOWS", "COUNT"), [(k, str(v)) for k, v in result.workflows.items()])
    click.echo()
    print_table(("TASKS", "COUNT"), [(k, str(v)) for k, v in result.tasks.items()])


@main.command()
@click.argument("workflow_id", metavar="ID")
@json_option
@database_option
def logs(workflow_id: str, as_json: bool, database: str) -> None:
    """Print the log lines workflow ID wrote (ctx.logger) and activity retries."""

    async def operation() -> list[tuple[int, str, str]]:
        store = open_store(database)
        await _workflow(store, workflow_id)
        return await store.list_logs(workflow_id)

    lines = run(operation)
    if as_json:
        echo_json([{"created_at": at, "level": level, "message": msg} for at, level, msg in lines])
        return
    if not lines:
        click.echo(f"workflow {workflow_id} has no log lines", err=True)
    for at, level, message in lines:
        click.echo(f"{when(at)} {level:<7} {message}")


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
        records = [await _workflow(store, workflow_id)]
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


@main.command()
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
    registry = _compiled_workflows(app)
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


@main.command()
@json_option
@database_option
def doctor(as_json: bool, database: str) -> None:
    """Check the database: settings, schema version, expired leases and stuck workflows.

    Exit 1 when something needs an operator (wrong journal mode, old schema, stuck workflows).
    """

    async def operation() -> Diagnosis:
        return await open_store(database).diagnose()

    found = run(operation)
    problems = _problems(found)
    if as_json:
        echo_json(
            {
                "database": database,
                "backend": found.backend,
                "settings": found.settings,
                "schema_version": found.schema_version,
                "latest_schema_version": found.latest_schema_version,
                "expired_leases": [
                    {"task_id": task_id, "workflow_id": wid, "lease_owner": owner}
                    for task_id, wid, owner in found.expired_leases
                ],
                "stuck_workflows": found.stuck,
                "idle_workflows": found.idle,
                "lost_workflows": found.lost,
                "problems": problems,
                "is_healthy": not problems,
            }
        )
    else:
        _print_doctor(database, found, problems)
    if problems:
        sys.exit(1)


def _problems(found: Diagnosis) -> list[str]:
    problems = []
    if found.backend == "sqlite" and found.settings.get("journal_mode", "").lower() != "wal":
        problems.append(f"journal_mode is {found.settings.get('journal_mode')}, expected wal")
    if found.backend == "sqlite" and found.settings.get("synchronous") == "off":
        problems.append("synchronous is off: a power loss can drop committed workflow events")
    for setting in ("fsync", "synchronous_commit"):
        if found.backend == "postgresql" and found.settings.get(setting) == "off":
            problems.append(f"{setting} is off: a crash can drop committed workflow events")
    if found.schema_version < found.latest_schema_version:
        problems.append(
            f"schema version {found.schema_version} < {found.latest_schema_version}; "
            "run `loom init` to migrate"
        )
    if found.stuck:
        problems.append(
            f"{len(found.stuck)} stuck workflow(s) have unprocessed events and no task: "
            + ", ".join(found.stuck[:10])
        )
    if found.lost:
        problems.append(
            f"{len(found.lost)} workflow(s) are RUNNING with no task and nothing to wait for "
            "(no signal wait, no open child), so nothing will ever move them: "
            + ", ".join(found.lost[:10])
            + "; this is an engine defect, please report it with `loom inspect` of one"
        )
    return problems


def _print_doctor(database: str, found: Diagnosis, problems: list[str]) -> None:
    fields = [("database", f"{database} ({found.backend})")]
    fields += [(name, value) for name, value in found.settings.items()]
    fields += [
        ("schema", f"version {found.schema_version} (latest {found.latest_schema_version})"),
        ("expired leases", str(len(found.expired_leases))),
        ("stuck workflows", str(len(found.stuck))),
        ("lost workflows", str(len(found.lost))),
        ("idle workflows", f"{found.idle} (waiting for a signal or a child)"),
    ]
    print_fields(fields)
    if found.expired_leases:
        click.echo(
            f"warning: {len(found.expired_leases)} task lease(s) expired; a running worker "
            "reclaims them (start one if none runs)",
            err=True,
        )
    for problem in problems:
        click.echo(f"problem: {problem}", err=True)
    click.echo("no problems found" if not problems else f"{len(problems)} problem(s) found")
