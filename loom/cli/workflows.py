"""Commands on workflows: init, worker, start, list, inspect, signal, cancel, stats, logs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal as os_signal  # `signal` is the command below
from typing import TYPE_CHECKING, Any

import click

from loom._json import JSON
from loom.breaker import Breaker
from loom.cli.options import (
    DEFAULT_LIST_LIMIT,
    STOP_SIGNALS,
    InvalidInputError,
    UnknownWorkflowTypeError,
    _compact,
    _step_label,
    database_option,
    echo_json,
    json_option,
    load_app,
    open_store,
    print_fields,
    print_table,
    read_json,
    run,
    when,
)
from loom.exceptions import WorkflowClosedError, WorkflowNotFoundError
from loom.history import Event, WorkflowStatus
from loom.store import Store, WorkflowRecord
from loom.summary import egress_json, event_json, usage_json, workflow_json

if TYPE_CHECKING:
    from loom.store import StoreStats
    from loom.workflow import CompiledWorkflow


@click.command()
@database_option
def init(database: str) -> None:
    """Create the database, or migrate it to the current schema."""

    async def operation() -> int:
        return (await open_store(database, create=True).diagnose()).schema_version

    version = run(operation)
    click.echo(f"database {database} ready (schema version {version})")


@click.command()
@click.option(
    "--app",
    "app",
    help="Module (or definition .json) defining workflows and activities; without it the "
    "worker runs the definitions registered in the database (loom wdl register).",
)
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
    "--max-recoveries",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="Suspend a workflow whose task killed this many workers in a row (a poison pill).",
)
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    default="INFO",
    show_default=True,
    help="What the worker reports on stderr (store outages, failed tasks, recoveries).",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="json: one object per line with timestamp, level, logger, message, workflow_id, "
    "workflow_name, activity, attempt, trace_id, span_id.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(min=0, max=65535),
    default=None,
    help="Serve Prometheus metrics on http://127.0.0.1:PORT/metrics (0: any free port; "
    "needs loom[otel]).",
)
@click.option("--metrics-host", default="127.0.0.1", show_default=True)
@click.option(
    "--allocator",
    type=click.Choice(["system", "pymalloc"]),
    default="system",
    show_default=True,
    help="system: the C library's malloc, so the memory of a burst of workflows goes back to "
    "the OS once it drains; pymalloc: CPython's own, ~9% less CPU per workflow but a burst's "
    "memory stays. An explicit PYTHONMALLOC wins.",
)
@database_option
def worker(
    app: str | None,
    concurrency: int,
    poll_interval: float,
    lease_seconds: float,
    max_recoveries: int,
    log_level: str,
    log_format: str,
    metrics_port: int | None,
    metrics_host: str,
    allocator: str,
    database: str,
) -> None:
    """Run a worker until SIGINT/SIGTERM (in-flight tasks finish, leases are released).

    With the OpenTelemetry SDK installed (loom[otel]) and OTEL_EXPORTER_OTLP_ENDPOINT set,
    its spans are exported over OTLP/HTTP."""
    from loom import _memory

    if allocator == "system":
        _memory.use_system_allocator()  # first: it may re-execute this process (same pid)
    from loom import telemetry
    from loom.worker import Worker

    # An operator must see a store outage and its recovery; without handlers Python
    # would print only warnings and above, unformatted.
    if log_format == "json":
        logging.basicConfig(level=log_level.upper(), handlers=[telemetry.json_log_handler()])
    else:
        logging.basicConfig(
            level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    telemetry.export_traces_from_env()
    if metrics_port is not None:
        try:
            server = telemetry.serve_metrics(metrics_port, metrics_host)
        except (RuntimeError, OSError) as err:
            raise click.ClickException(f"metrics: {err}") from err
        click.echo(f"metrics on http://{metrics_host}:{server.server_port}/metrics", err=True)

    workflows, activities = load_app(app) if app else ([], [])
    instance = Worker(
        workflows=workflows,
        activities=activities,
        concurrency=concurrency,
        poll_interval=poll_interval,
        lease_seconds=lease_seconds,
        max_recoveries=max_recoveries,
        database=database,
    )
    click.echo(
        f"worker {instance.worker_id} serving {len(workflows)} workflow(s), "
        f"{len(activities)} activity(ies) and the registered definitions from {database} "
        f"(allocator: {_memory.allocator()})",
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


def compiled_workflows(app: str) -> dict[str, CompiledWorkflow[Any, Any]]:
    workflows, _ = load_app(app)
    compiled = [workflow.compile() for workflow in workflows]
    return {item.name: item for item in compiled}


@click.command()
@click.argument("name")
@click.option("--input", "input_text", default="{}", show_default=True, metavar="JSON|@FILE|-")
@click.option("--id", "workflow_id", help="Workflow id (an idempotency key); default: a UUID.")
@click.option("--owner", help="Who the workflow works for (see loom.get_progress).")
@click.option(
    "--app",
    "app",
    help="Module defining the workflow; without it NAME[@RANGE] is a definition registered "
    "in the database (loom wdl register).",
)
@database_option
def start(
    name: str,
    input_text: str,
    workflow_id: str | None,
    owner: str | None,
    app: str | None,
    database: str,
) -> None:
    """Start workflow NAME (its @loom.workflow name, or a registered definition's
    NAME[@RANGE]); prints the workflow id.

    A W3C trace context in TRACEPARENT (and TRACESTATE) becomes the workflow's parent trace."""
    from loom.client import start_workflow

    value = read_json(input_text, "--input")

    from loom import telemetry

    telemetry.export_traces_from_env()

    async def operation() -> str:
        store = open_store(database, create=True)
        if app:
            workflows = compiled_workflows(app)
            compiled = workflows.get(name)
            if compiled is None:
                raise UnknownWorkflowTypeError(name, app, list(workflows))
        else:
            from loom import wdl

            compiled = await wdl.resolve(store, name)
        try:
            compiled.encode_input(value)
        except TypeError as err:
            raise InvalidInputError("--input", f"does not fit: {err}") from err
        with telemetry.context_from_env():  # TRACEPARENT: a calling script's trace
            handle = await start_workflow(
                compiled, value, workflow_id=workflow_id, owner=owner, database=database
            )
        return handle.workflow_id

    started = run(operation)
    click.echo(f"started {name} workflow {started}", err=True)
    click.echo(started)


@click.command(name="list")
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


async def find_workflow(store: Store, workflow_id: str) -> WorkflowRecord:
    record = await store.get_workflow(workflow_id)
    if record is None:
        raise WorkflowNotFoundError(workflow_id)
    return record


@click.command()
@click.argument("workflow_id", metavar="ID")
@click.option("--events", "with_events", is_flag=True, help="Include the full event history.")
@click.option(
    "--egress",
    "with_egress",
    is_flag=True,
    help="Include the egress journal: each sandboxed HTTP request (no bodies, queries, secrets).",
)
@json_option
@database_option
def inspect(
    workflow_id: str, with_events: bool, with_egress: bool, as_json: bool, database: str
) -> None:
    """Show one workflow: status, current step, state and history."""

    async def operation() -> tuple[WorkflowRecord, list[Event]]:
        store = open_store(database)
        record = await find_workflow(store, workflow_id)
        return record, await store.list_events(workflow_id)

    record, events = run(operation)
    if as_json:
        data = workflow_json(record, full=True)
        data["usage"] = usage_json(events)
        if with_events:
            data["events"] = [event_json(event) for event in events]
        if with_egress:
            data["egress"] = egress_json(events)
        echo_json(data)
        return
    _print_workflow(record, events)
    if with_egress:
        click.echo()
        _print_egress(egress_json(events))
    if with_events:
        click.echo()
        print_table(
            ("SEQ", "TIME (UTC)", "KIND", "DETAILS"),
            [
                (str(e.sequence), when(e.created_at), e.kind.value, _compact(e.payload))
                for e in events
            ],
        )


def _print_egress(journal: list[dict[str, JSON]]) -> None:
    if not journal:
        click.echo("egress: no sandboxed HTTP requests recorded")
        return
    print_table(
        ("SEQ", "ACTIVITY", "METHOD", "HOST:PORT", "PATH", "STATUS", "OUT", "IN", "MS"),
        [
            (
                str(e["seq"]),
                f"{e['activity']}" + (f" {e['version']}" if e["version"] else ""),
                str(e["method"]),
                f"{e['host']}:{e['port']}",
                str(e["path"]),
                str(e["status"] if e["status"] is not None else e["error"]),
                str(e["bytes_out"]),
                str(e["bytes_in"]),
                f"{e['duration_ms']:.1f}" if isinstance(e["duration_ms"], float | int) else "-",
            )
            for e in journal
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
        fields += _error_details(record.error)
    if record.status is WorkflowStatus.SUSPENDED:
        fields.append(
            ("next", f"fix the cause, then `loom resume {record.workflow_id}` (or `loom fork`)")
        )
    usage = usage_json(events)
    if usage["calls"]:
        cost = "" if usage["cost"] is None else f", ${usage['cost']:.6f}"
        fields.append(
            (
                "llm usage",
                f"{usage['total_tokens']} tokens ({usage['prompt_tokens']} prompt, "
                f"{usage['completion_tokens']} completion) in {usage['calls']} calls{cost}",
            )
        )
    history = f"{len(events)} events"
    if last is not None:
        history += f", last {last.kind.value} at {when(last.created_at)} UTC"
    fields.append(("history", history))
    print_fields(fields)


def _error_details(error: dict[str, JSON]) -> list[tuple[str, str]]:
    """What an operator needs to fix a suspension: the replay mismatch and the attempts."""
    details = error.get("details")
    if not isinstance(details, dict):
        return []
    shown = (
        ("expected", "expected"),
        ("actual", "code issued"),
        ("attempt", "attempt"),
        ("recoveries", "worker deaths"),
        ("task", "task"),
    )
    return [(label, str(details[key])) for key, label in shown if details.get(key) is not None]


@click.command()
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


@click.command()
@click.argument("workflow_id", metavar="ID")
@click.option("--reason", help="Why; recorded in the history.")
@database_option
def cancel(workflow_id: str, reason: str | None, database: str) -> None:
    """Request cancellation of workflow ID; it stops at its next await."""

    async def operation() -> WorkflowStatus | None:
        store = open_store(database)
        record = await find_workflow(store, workflow_id)
        if record.status.is_closed:
            return record.status
        if not await store.cancel_workflow(workflow_id, reason):
            return (await find_workflow(store, workflow_id)).status
        return None

    closed = run(operation)
    if closed is WorkflowStatus.CANCELED:
        click.echo(f"workflow {workflow_id} was already cancelled")
    elif closed is not None:
        raise WorkflowClosedError(workflow_id, closed.value, "be cancelled")
    else:
        click.echo(f"cancellation requested for {workflow_id}")


@click.command()
@json_option
@database_option
def stats(as_json: bool, database: str) -> None:
    """Workflow counts by status and the task queue (due, scheduled, leased, expired)."""

    async def operation() -> tuple[StoreStats, list[Breaker]]:
        store = open_store(database)
        return await store.collect_stats(), await store.list_breakers()

    result, breakers = run(operation)
    if as_json:
        echo_json(
            {
                "workflows": result.workflows,
                "tasks": result.tasks,
                "circuit_breakers": [b.to_json() for b in breakers],
            }
        )
        return
    print_table(("WORKFLOWS", "COUNT"), [(k, str(v)) for k, v in result.workflows.items()])
    click.echo()
    print_table(("TASKS", "COUNT"), [(k, str(v)) for k, v in result.tasks.items()])
    if breakers:
        click.echo()
        print_table(
            ("CIRCUIT BREAKER", "STATE", "RECENT FAILURES", "TIMES OPENED"),
            [
                (b.activity_name, b.state.value, str(len(b.failure_times)), str(b.times_opened))
                for b in breakers
            ],
        )


@click.command()
@click.argument("workflow_id", metavar="ID")
@json_option
@database_option
def logs(workflow_id: str, as_json: bool, database: str) -> None:
    """Print the log lines workflow ID wrote (ctx.logger) and activity retries."""

    async def operation() -> list[tuple[int, str, str]]:
        store = open_store(database)
        await find_workflow(store, workflow_id)
        return await store.list_logs(workflow_id)

    lines = run(operation)
    if as_json:
        echo_json([{"created_at": at, "level": level, "message": msg} for at, level, msg in lines])
        return
    if not lines:
        click.echo(f"workflow {workflow_id} has no log lines", err=True)
    for at, level, message in lines:
        click.echo(f"{when(at)} {level:<7} {message}")
