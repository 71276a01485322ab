"""`loom web`: serve the dashboard (see `loom.web`)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from typing import Any

import click

from loom.cli.options import load_app, require_database
from loom.client import DEFAULT_DATABASE

TOKEN_ENV = "LOOM_WEB_TOKEN"


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8000,
    show_default=True,
    help="Port (0: any free one; the URL is printed).",
)
@click.option(
    "--db",
    "database",
    envvar="LOOM_DATABASE",
    default=DEFAULT_DATABASE,
    show_default=True,
    help="Database path or URL (env LOOM_DATABASE).",
)
@click.option(
    "--app",
    "apps",
    multiple=True,
    metavar="MODULE",
    help="Module whose workflow definitions to show (step graphs); repeatable.",
)
@click.option(
    "--token",
    envvar=TOKEN_ENV,
    default=None,
    help=f"Require this token on every request (env {TOKEN_ENV}); needed off loopback.",
)
def web(host: str, port: int, database: str, apps: tuple[str, ...], token: str | None) -> None:
    """Serve the dashboard: live workflows, history, graphs, signals, stats, /metrics, /docs."""

    try:
        import uvicorn

        from loom.web import create_app, is_loopback
    except ImportError as err:
        raise click.ClickException(
            f"loom web needs the web extra: pip install 'loom[web]' ({err})"
        ) from err
    if not is_loopback(host) and not token:
        raise click.UsageError(
            f"refusing to serve on {host!r} without a token: anyone who can reach it could "
            f"signal and cancel workflows. Set --token or {TOKEN_ENV}, or bind 127.0.0.1",
        )
    compiled: list[Any] = []
    for spec in apps:
        workflows, _ = load_app(spec)
        compiled += [w.compile() for w in workflows]
    if "://" not in database:
        database = require_database(database)
    app = create_app(database=database, token=token or None, workflows=compiled)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise click.ClickException(f"cannot listen on {host}:{port}: {err.strerror}") from err
    sock.listen(128)
    sock.set_inheritable(True)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    url = f"http://{shown}:{bound}/"
    hint = " (open it once with ?token=TOKEN)" if token else ""
    click.echo(f"loom web serving {url}{hint}; Ctrl-C stops", err=False)
    config = uvicorn.Config(
        app,
        log_level=os.environ.get("LOOM_WEB_LOG_LEVEL", "warning"),
        timeout_graceful_shutdown=3,
        lifespan="on",
    )
    # uvicorn shuts down gracefully on Ctrl-C or SIGTERM (closing open SSE streams), then
    # re-raises the signal to the handler it found: ours makes either a clean exit.
    signal.signal(signal.SIGTERM, _interrupt)
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.Server(config).run(sockets=[sock])
    click.echo("loom web stopped")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
