"""`loom schedule …`, `loom activity reset-breaker|show` and `loom stats` through CliRunner."""

from __future__ import annotations

import asyncio
import json

import pytest

from loom.breaker import BreakerState
from loom.client import get_store
from tests.loom.test_breaker import CallDownstream, downstream, open_breaker
from tests.loom.test_cli import assert_error, loom_cli

APP = "tests.loom.test_schedule"


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOOM_DEBUG", raising=False)
    monkeypatch.delenv("LOOM_DATABASE", raising=False)


def create(db, name: str, *extra: str) -> None:
    result = loom_cli(
        "schedule", "create", name, "--cron", "*/5 * * * *", "--workflow", "Ping",
        "--app", APP, "--input", '{"say": "hi"}', *extra, db=db,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"schedule {name} of Ping: */5 * * * *")


def test_schedule_commands(tmp_path) -> None:
    db = tmp_path / "loom.db"
    create(db, "every5", "--timezone", "Europe/Berlin", "--catchup", "all")
    listed = json.loads(loom_cli("schedule", "list", "--json", db=db).stdout)
    assert [(s["name"], s["timezone"], s["catchup"], s["overlap"]) for s in listed] == [
        ("every5", "Europe/Berlin", "all", "skip")
    ]
    assert loom_cli("schedule", "pause", "every5", db=db).stdout == "schedule every5 paused\n"
    assert json.loads(loom_cli("schedule", "list", "--json", db=db).stdout)[0]["is_paused"]
    resumed = loom_cli("schedule", "resume", "every5", db=db)
    assert resumed.stdout.startswith("schedule every5 resumed; next tick")
    triggered = loom_cli("schedule", "trigger", "every5", db=db)
    assert triggered.exit_code == 0, triggered.output
    workflow_id = triggered.stdout.strip()
    assert workflow_id.startswith("every5@")
    shown = json.loads(loom_cli("inspect", workflow_id, "--json", db=db).stdout)
    assert shown["workflow_name"] == "Ping"
    assert loom_cli("schedule", "delete", "every5", db=db).stdout == "schedule every5 deleted\n"
    assert_error(
        loom_cli("schedule", "delete", "every5", db=db),
        "ScheduleNotFoundError",
        "schedule 'every5' not found",
    )


def test_schedule_create_errors_name_what_is_wrong(tmp_path) -> None:
    db = tmp_path / "loom.db"
    bad_cron = loom_cli(
        "schedule", "create", "x", "--cron", "*/5 * * *", "--workflow", "Ping", "--app", APP,
        "--input", '{"say": "hi"}', db=db,
    )  # fmt: skip
    assert_error(bad_cron, "ScheduleError", "invalid cron expression '*/5 * * *'")
    bad_zone = loom_cli(
        "schedule", "create", "x", "--cron", "* * * * *", "--workflow", "Ping", "--app", APP,
        "--timezone", "Europe/Nowhere", db=db,
    )  # fmt: skip
    assert_error(bad_zone, "ScheduleError", "unknown time zone 'Europe/Nowhere'")
    unknown = loom_cli(
        "schedule", "create", "x", "--cron", "* * * * *", "--workflow", "Nope", "--app", APP,
        db=db,
    )  # fmt: skip
    assert_error(unknown, "UnknownWorkflowTypeError", "no workflow named 'Nope'")
    assert json.loads(loom_cli("schedule", "list", "--json", db=db).stdout) == []


async def test_breaker_is_shown_and_reset_by_the_cli(db_path, make_worker, tmp_path) -> None:
    if not str(db_path).endswith(".db"):
        pytest.skip("the CLI half runs on the SQLite file")
    async with make_worker([CallDownstream], [downstream]):
        await open_breaker(db_path)
    await asyncio.to_thread(_cli_half, db_path)
    [breaker] = await get_store(db_path).list_breakers()
    assert breaker.state is BreakerState.CLOSED


def _cli_half(db_path) -> None:
    shown = json.loads(loom_cli("activity", "show", "downstream", "--json", db=db_path).stdout)
    assert shown["circuit_breaker"] == {
        "failures": 3,
        "window_ms": 60000,
        "reset_after_ms": 3600000,
    }
    assert shown["circuit_breaker_state"]["state"] == "open"
    text = loom_cli("activity", "show", "downstream", db=db_path).stdout
    assert "circuit breaker" in text and "open, 0 recent failure(s), opened 1 time(s)" in text
    stats = json.loads(loom_cli("stats", "--json", db=db_path).stdout)
    assert [(b["activity_name"], b["state"]) for b in stats["circuit_breakers"]] == [
        ("downstream", "open")
    ]
    reset = loom_cli("activity", "reset-breaker", "downstream", db=db_path)
    assert reset.stdout == "circuit breaker of downstream closed; deferred calls run now\n"
    assert_error(
        loom_cli("activity", "reset-breaker", "nope", db=db_path),
        "BreakerNotFoundError",
        "no circuit breaker for activity 'nope' (breakers: downstream)",
    )
