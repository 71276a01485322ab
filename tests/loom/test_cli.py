"""Operator commands through click's CliRunner: parsing, rendering and error lines.

Behaviour against a real worker subprocess lives in tests/e2e/test_operator_cli.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

import loom
from examples.quiz import QuizWorkflow, grade
from loom.cli import main
from loom.client import get_store
from loom.sqlite_store import MIGRATIONS
from tests.conftest import is_postgres, run_sql

QUIZ_INPUT = json.dumps({"student": "ann", "answers": ["b", "a", "d", "x"]})
WORKFLOW_KEYS = {
    "workflow_id",
    "workflow_name",
    "workflow_version",
    "status",
    "owner",
    "agent",
    "parent_id",
    "current_step",
    "step_description",
    "step_number",
    "total_steps",
    "created_at",
    "updated_at",
}


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOOM_DEBUG", raising=False)
    monkeypatch.delenv("LOOM_DATABASE", raising=False)


def loom_cli(*args: str, db: Path | None = None) -> Result:
    extra = () if db is None else ("--db", str(db))
    command, *rest = args
    return CliRunner().invoke(main, [command, *rest, *extra], catch_exceptions=False)


def assert_error(result: Result, error_type: str, *fragments: str) -> None:
    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    line = result.stderr.rstrip("\n")
    assert "\n" not in line and "Traceback" not in line, line
    assert line.startswith(f"{error_type}: "), line
    for fragment in fragments:
        assert fragment in line


def execute_sql(db: Path, *statements: str) -> None:
    """Edit the database behind the engine's back (simulates manual surgery or lost rows)."""
    if is_postgres(db):
        run_sql(str(db), *statements)
        return
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        for statement in statements:
            conn.execute(statement)


def start_quiz(db: Path, workflow_id: str, *, owner: str = "u1") -> None:
    started = loom_cli(
        "start", "Quiz", "--app", "examples.quiz", "--id", workflow_id, "--owner", owner,
        "--input", QUIZ_INPUT, db=db,
    )  # fmt: skip
    assert started.exit_code == 0, started.output
    assert started.stdout == f"{workflow_id}\n"


def run_until_waiting(db: Path, workflow_id: str, make_worker: Callable[..., loom.Worker]) -> None:
    """Run a real in-process worker until the quiz waits for its teacher."""

    async def drive() -> None:
        store = get_store(db)
        async with make_worker([QuizWorkflow], [grade]):
            while (await store.list_events(workflow_id))[-1].kind != "SIGNAL_WAIT_STARTED":
                await asyncio.sleep(0.02)

    asyncio.run(drive())


# -- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [("list",), ("inspect", "x"), ("stats",), ("logs", "x"), ("doctor",), ("signal", "x", "go")],
)
def test_read_commands_refuse_a_missing_database(tmp_path: Path, args: tuple[str, ...]) -> None:
    db = tmp_path / "absent.db"
    assert_error(loom_cli(*args, db=db), "DatabaseNotFoundError", str(db), "loom init")
    assert not db.exists()


def test_debug_adds_the_traceback(tmp_path: Path) -> None:
    db = tmp_path / "absent.db"
    result = CliRunner().invoke(main, ["--debug", "list", "--db", str(db)])
    assert result.exit_code == 1
    assert "Traceback" in result.stderr
    assert result.stderr.splitlines()[-1].startswith("DatabaseNotFoundError: ")


def test_unknown_ids_and_names(db_path: Path) -> None:
    assert loom_cli("init", db=db_path).exit_code == 0
    for args in (
        ("inspect", "nope"),
        ("logs", "nope"),
        ("cancel", "nope"),
        ("signal", "nope", "go"),
    ):
        assert_error(loom_cli(*args, db=db_path), "WorkflowNotFoundError", "'nope'")
    assert_error(
        loom_cli("start", "Nope", "--app", "examples.quiz", db=db_path),
        "UnknownWorkflowTypeError",
        "'Nope'",
        "defined: Quiz",
    )
    assert_error(
        loom_cli("replay", "nope", "--app", "examples.quiz", db=db_path), "WorkflowNotFoundError"
    )


def test_malformed_json(db_path: Path, tmp_path: Path) -> None:
    start_quiz(db_path, "q1")
    bad = loom_cli("start", "Quiz", "--app", "examples.quiz", "--input", "{oops", db=db_path)
    assert_error(bad, "InvalidInputError", "--input is not valid JSON")
    missing = loom_cli(
        "start", "Quiz", "--app", "examples.quiz", "--input", f"@{tmp_path / 'no.json'}",
        db=db_path,
    )  # fmt: skip
    assert_error(missing, "InvalidInputError", "cannot be read")
    wrong_shape = loom_cli("start", "Quiz", "--app", "examples.quiz", "--input", "[1]", db=db_path)
    assert_error(wrong_shape, "InvalidInputError", "does not fit")
    payload = loom_cli("signal", "q1", "approve", "--payload", "nope", db=db_path)
    assert_error(payload, "InvalidInputError", "--payload")


@pytest.mark.parametrize(
    "args",
    [
        ("list", "--status", "BOGUS"),
        ("list", "--limit", "0"),
        ("replay", "--app", "examples.quiz"),
        ("replay", "x", "--all", "--app", "examples.quiz"),
        ("start", "Quiz", "--app", "no_such_module_here"),
        ("inspect",),
    ],
)
def test_usage_errors_exit_2(db_path: Path, args: tuple[str, ...]) -> None:
    result = loom_cli(*args, db=db_path)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""


def test_start_without_app_names_registered_definitions(db_path: Path) -> None:
    result = loom_cli("start", "Quiz", db=db_path)
    assert result.exit_code == 1
    assert "no definition named 'Quiz' is registered" in result.stderr
    assert "--app MODULE" in result.stderr


def test_unsupported_database_url_is_a_usage_error() -> None:
    result = CliRunner().invoke(main, ["stats", "--db", "mysql://localhost/loom"])
    assert result.exit_code == 2
    assert "postgresql://" in result.stderr and "Traceback" not in result.stderr


def test_missing_postgres_database_is_one_line(db_path: Path) -> None:
    if not is_postgres(db_path):
        pytest.skip("PostgreSQL only: a missing SQLite file has its own test above")
    missing = str(db_path).replace("/test?", "/loom_no_such_database?")
    assert_error(loom_cli("stats", db=missing), "InvalidCatalogNameError", "does not exist")


# -- rendering -------------------------------------------------------------------------------


def test_start_list_inspect_render_plain_and_json(db_path: Path, tmp_path: Path) -> None:
    start_quiz(db_path, "q1", owner="u1")
    (tmp_path / "in.json").write_text(QUIZ_INPUT)
    from_file = loom_cli(
        "start", "Quiz", "--app", "examples.quiz", "--input", f"@{tmp_path / 'in.json'}",
        "--owner", "u2", db=db_path,
    )  # fmt: skip
    assert from_file.exit_code == 0, from_file.output
    generated_id = from_file.stdout.strip()

    plain = loom_cli("list", db=db_path)
    assert plain.exit_code == 0
    header, *rows = plain.stdout.splitlines()
    assert header.split("\t") == ["WORKFLOW ID", "NAME", "STATUS", "STEP", "OWNER", "UPDATED (UTC)"]
    assert {tuple(row.split("\t")[:5]) for row in rows} == {
        ("q1", "Quiz", "PENDING", "1/2", "u1"),
        (generated_id, "Quiz", "PENDING", "1/2", "u2"),
    }

    listed = json.loads(loom_cli("list", "--owner", "u1", "--json", db=db_path).stdout)
    assert [set(item) for item in listed] == [WORKFLOW_KEYS]
    assert listed[0]["workflow_id"] == "q1" and listed[0]["agent"] == "Robin"
    assert json.loads(loom_cli("list", "--status", "completed", "--json", db=db_path).stdout) == []
    assert len(json.loads(loom_cli("list", "--limit", "1", "--json", db=db_path).stdout)) == 1
    by_name = loom_cli("list", "--name", "Other", "--json", db=db_path)
    assert json.loads(by_name.stdout) == []

    inspected = json.loads(loom_cli("inspect", "q1", "--events", "--json", db=db_path).stdout)
    assert inspected["status"] == "PENDING"
    assert inspected["message"] == "Robin is getting started"
    assert inspected["input"] == json.loads(QUIZ_INPUT)
    assert [e["kind"] for e in inspected["events"]] == ["WORKFLOW_STARTED"]
    assert set(inspected["events"][0]) == {"sequence", "kind", "payload", "created_at"}

    human = loom_cli("inspect", "q1", db=db_path)
    assert "status: PENDING" in human.stdout
    assert "history: 1 events" in human.stdout


def test_signal_cancel_stats_and_doctor(db_path: Path) -> None:
    start_quiz(db_path, "q1")
    start_quiz(db_path, "q2")
    sent = loom_cli("signal", "q1", "approve", "--payload", '{"teacher": "t"}', db=db_path)
    assert sent.exit_code == 0 and "approve" in sent.stdout
    cancelled = loom_cli("cancel", "q2", "--reason", "duplicate", db=db_path)
    assert cancelled.exit_code == 0 and "q2" in cancelled.stdout
    events = json.loads(loom_cli("inspect", "q2", "--events", "--json", db=db_path).stdout)
    assert events["events"][-1]["payload"] == {"reason": "duplicate"}

    stats = json.loads(loom_cli("stats", "--json", db=db_path).stdout)
    assert stats["workflows"] == {
        "PENDING": 2, "RUNNING": 0, "COMPLETED": 0, "FAILED": 0, "CANCELED": 0,
        "SUSPENDED": 0,
    }  # fmt: skip
    assert stats["tasks"] == {"due": 2, "scheduled": 0, "leased": 0, "expired": 0}

    doctor = loom_cli("doctor", "--json", db=db_path)
    assert doctor.exit_code == 0, doctor.output
    report = json.loads(doctor.stdout)
    settings = report["settings"]
    if is_postgres(db_path):
        assert settings["fsync"] == "on" and settings["synchronous_commit"] != "off"
        assert int(settings["max_connections"]) > 0
    else:
        assert settings["journal_mode"] == "wal"
        assert settings["synchronous"] in {"normal", "full", "extra"}
        assert int(settings["busy_timeout"]) > 0
    assert report["schema_version"] == report["latest_schema_version"] >= 1
    assert report["is_healthy"] is True and report["stuck_workflows"] == []

    # A task row lost (e.g. by manual surgery) leaves q1 with unseen events and nothing to run it.
    execute_sql(db_path, "DELETE FROM tasks WHERE workflow_id = 'q1'")
    sick = loom_cli("doctor", db=db_path)
    assert sick.exit_code == 1
    assert "stuck workflows: 1" in sick.stdout
    assert "q1" in sick.stderr


def test_logs_and_replay_of_a_real_run(
    db_path: Path, make_worker: Callable[..., loom.Worker]
) -> None:
    start_quiz(db_path, "q1")
    run_until_waiting(db_path, "q1", make_worker)
    logs = loom_cli("logs", "q1", db=db_path)
    assert logs.exit_code == 0
    assert logs.stdout.rstrip().endswith("INFO    graded ann: 3")
    [line] = json.loads(loom_cli("logs", "q1", "--json", db=db_path).stdout)
    assert set(line) == {"created_at", "level", "message"}

    replayed = loom_cli("replay", "--all", "--app", "examples.quiz", "--json", db=db_path)
    assert replayed.exit_code == 0, replayed.output
    report = json.loads(replayed.stdout)
    assert (report["replayed"], report["ok"], report["non_deterministic"]) == (1, 1, 0)
    single = loom_cli("replay", "q1", "--app", "examples.quiz", db=db_path)
    assert single.stdout == "replayed 1 workflow(s): 1 ok, 0 non-deterministic, 0 skipped\n"
    human = loom_cli("inspect", "q1", db=db_path)
    assert "step: 2/2 review - Robin is waiting for the teacher" in human.stdout


def test_init_creates_and_is_idempotent(tmp_path: Path) -> None:
    db = tmp_path / "new.db"
    for _ in range(2):
        result = loom_cli("init", db=db)
        assert result.exit_code == 0
        assert result.stdout == f"database {db} ready (schema version {len(MIGRATIONS)})\n"
    assert db.exists()


def test_terminal_output_uses_rich_tables(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    start_quiz(db_path, "q1")
    monkeypatch.setattr("loom.cli.options.is_terminal", lambda: True)
    setting = "synchronous_commit" if is_postgres(db_path) else "journal_mode"
    for args, expected in (
        (("list",), ("WORKFLOW ID", "q1", "PENDING")),
        (("inspect", "q1"), ("workflow", "Robin is getting started")),
        (("stats",), ("WORKFLOWS", "TASKS", "due")),
        (("doctor",), (setting, "no problems found")),
    ):
        result = loom_cli(*args, db=db_path)
        assert result.exit_code == 0, result.output
        assert "\t" not in result.stdout
        for text in expected:
            assert text in result.stdout


def test_replay_skips_workflow_types_the_app_does_not_define(db_path: Path) -> None:
    start_quiz(db_path, "q1")
    order = json.dumps({"order_id": "o1", "amount_cents": 5, "email": "a@b.c"})
    started = loom_cli(
        "start", "Order", "--app", "examples.order", "--input", order, "--id", "o1", db=db_path
    )
    assert started.exit_code == 0, started.output
    result = loom_cli("replay", "--all", "--app", "examples.quiz", "--json", db=db_path)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["replayed"], report["ok"], report["skipped"]) == (1, 1, 1)
    [skipped] = [w for w in report["workflows"] if w["result"] == "skipped"]
    assert skipped["workflow_id"] == "o1"
    plain = loom_cli("replay", "--all", "--app", "examples.quiz", db=db_path)
    assert plain.stdout.splitlines()[0].startswith("skipped\to1\t")


def test_cancel_of_a_closed_workflow(db_path: Path) -> None:
    start_quiz(db_path, "q1")
    start_quiz(db_path, "q2")
    assert loom_cli("cancel", "q1", db=db_path).exit_code == 0
    # Close both by hand: no worker needed to check how cancel treats closed workflows.
    execute_sql(
        db_path,
        "UPDATE workflows SET status = 'CANCELED' WHERE workflow_id = 'q1'",
        "UPDATE workflows SET status = 'COMPLETED' WHERE workflow_id = 'q2'",
    )
    again = loom_cli("cancel", "q1", db=db_path)
    assert again.exit_code == 0
    assert "already cancelled" in again.stdout
    assert_error(loom_cli("cancel", "q2", db=db_path), "WorkflowClosedError", "COMPLETED")


def _modules_after(code: str) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys; print(' '.join(sys.modules))"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return set(done.stdout.split())


def test_import_loom_and_help_stay_cheap() -> None:
    """`import loom` and `loom --help` load no sandbox, schema or PostgreSQL library (they
    cost 0.4-0.8 s before any output when imported eagerly)."""
    heavy = {"wasmtime", "jsonschema", "asyncpg", "wasm_activities", "activity_registry"}
    assert not heavy & _modules_after("import loom")
    helped = _modules_after(
        "import sys\nfrom loom.cli import main\nsys.argv = ['loom', '--help']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass"
    )
    assert not (heavy | {"pydantic", "rich"}) & helped
    assert not {m for m in helped if m.startswith("loom.cli.")}  # no command module either


def test_the_lazy_command_table_matches_the_commands() -> None:
    from loom.cli import COMMANDS

    for name, (_, _, short_help) in COMMANDS.items():
        command = main.get_command(click.Context(main), name)
        assert command is not None and command.help is not None, name
        assert " ".join(command.help.split()).startswith(short_help.rstrip(".")), name


def test_a_public_name_keeps_its_decorator_after_its_module_loads() -> None:
    """`loom.activity` and `loom.workflow` are decorators, also once the submodules of the same
    names have been imported (which sets package attributes)."""
    code = (
        "import loom, loom.activity, loom.workflow, loom.worker\n"
        "assert callable(loom.activity) and not isinstance(loom.activity, type(loom))\n"
        "assert callable(loom.workflow) and not isinstance(loom.workflow, type(loom))\n"
        "assert loom.__version__ and 'Worker' in dir(loom)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
