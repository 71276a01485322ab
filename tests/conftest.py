"""Fixtures shared by every test package: a real SQLite file per test, or a fresh schema on
the real PostgreSQL server (LOOM_TEST_POSTGRES, default 127.0.0.1:5432 database `test`)."""

from __future__ import annotations

import asyncio
import functools
import os
import threading
import uuid
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import asyncpg
import pytest

import loom

if not any(ep.value == "loom._pytest" for ep in entry_points(group="pytest11")):
    # The `loom_env` fixture comes from loom's pytest11 entry point; a checkout newer than
    # the installed package metadata loads the plugin itself.
    pytest_plugins = ["loom._pytest"]

# A module's first compile is a child process with a 60 s limit (a guard against compile
# bombs); on a loaded 2-core machine a large component took longer. Tests of the limit pass
# their own; worker subprocesses inherit this.
os.environ.setdefault("LOOM_COMPILE_TIMEOUT_S", "600")

POSTGRES_URL = os.environ.get("LOOM_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def run_sql(url: str, *statements: str) -> list[Any]:
    """Run statements on PostgreSQL from sync code (on a thread: a test loop may be running)."""
    results: list[Any] = []
    failure: list[BaseException] = []

    async def main() -> None:
        conn = await asyncpg.connect(url, timeout=5)
        try:
            for statement in statements:
                results.append(await conn.fetch(statement))
        finally:
            await conn.close()

    def target() -> None:
        try:
            asyncio.run(main())
        except BaseException as err:
            failure.append(err)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return results


@functools.cache
def postgres_unreachable() -> str | None:
    """Why the PostgreSQL leg cannot run, or None when the server answers."""
    try:
        run_sql(POSTGRES_URL, "SELECT 1")
    except (OSError, asyncpg.PostgresError, TimeoutError) as err:
        return f"PostgreSQL not reachable at {POSTGRES_URL} ({type(err).__name__}: {err})"
    return None


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh schema on the test server (via search_path), dropped afterwards."""
    reason = postgres_unreachable()
    if reason is not None:
        pytest.skip(f"{reason}; set LOOM_TEST_POSTGRES or start the server")
    schema = f"loom_test_{uuid.uuid4().hex[:12]}"
    run_sql(POSTGRES_URL, f"CREATE SCHEMA {schema}")
    separator = "&" if "?" in POSTGRES_URL else "?"
    yield f"{POSTGRES_URL}{separator}search_path={schema}"
    run_sql(POSTGRES_URL, "SET lock_timeout = '10s'", f"DROP SCHEMA {schema} CASCADE")


def configured(database: Path | str) -> Iterator[Path | str]:
    loom.configure(database=database)
    yield database
    loom.configure(database=None)


@pytest.fixture
def db_path(tmp_path: Path) -> Iterator[Path | str]:
    """A fresh database file, configured as this process's default for the test."""
    yield from configured(tmp_path / "loom.db")


@pytest.fixture(params=["sqlite", "postgres"])
def any_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path | str]:
    """`db_path` on each backend in turn: a SQLite file, then a PostgreSQL URL."""
    if request.param == "sqlite":
        yield from configured(tmp_path / "loom.db")
    else:
        yield from configured(request.getfixturevalue("postgres_url"))


def is_postgres(database: Path | str) -> bool:
    return str(database).startswith(("postgres://", "postgresql://"))


# Test files whose modules are built from source: everything under these folders, and these.
_BUILDS_FOR = (
    {"wasm_activities", "examples"},
    {"test_wasm_activities.py", "test_wasm_workflow.py", "test_wdl_worker.py", "test_telemetry.py"},
)
_BUILDS_FOR_CLI = "test_activity_cli.py"


def _uses_wasm(path: Path) -> bool:
    folders, files = _BUILDS_FOR
    return bool(folders & set(path.parts)) or path.name in files or path.name == _BUILDS_FOR_CLI


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build every WASM module the selected tests use before the first test starts.

    A cold build (the Python component takes minutes on a slow machine) used to happen inside
    whichever test asked first, against that test's timeout; a killed build was never cached,
    so every later run failed again. Builds are cached under the git-ignored `.build/`,
    written atomically under a lock, and each has its own bound (`BUILD_TIMEOUT_S`).
    """
    if session.config.option.collectonly:
        return
    if not any(_uses_wasm(Path(str(item.path))) for item in session.items):
        return
    import time

    from examples.build import EXAMPLES_DIR
    from tests.wasm_activities.build import build_example
    from tests.wasm_activities.conftest import TEST_MODULES, build_test_module

    began = time.monotonic()
    examples = sorted(p.parent.name for p in EXAMPLES_DIR.glob("*/activity.toml"))
    for name in examples:
        build_example(name)
    for module in TEST_MODULES:
        build_test_module(module)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        count = len(examples) + len(TEST_MODULES)
        reporter.write_line(
            f"built or found {count} WASM modules in {time.monotonic() - began:.1f} s (.build/)"
        )


@pytest.fixture
def spans() -> Iterator[Any]:
    """An SDK tracer provider exporting to memory for this test only (the API keeps one
    global provider, set once: the test resets that guard so other tests run without)."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    _reset_tracing()
    trace.set_tracer_provider(provider)
    try:
        yield exporter
    finally:
        provider.shutdown()
        _reset_tracing()


def _reset_tracing() -> None:
    from opentelemetry import trace

    # The same reset opentelemetry's own test utilities do (reset_trace_globals).
    trace._TRACER_PROVIDER_SET_ONCE._done = False  # type: ignore[attr-defined]  # test-only reset
    trace._TRACER_PROVIDER = None  # type: ignore[attr-defined]
