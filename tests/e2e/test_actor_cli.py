"""`loom actor send|ask|list|inspect` against a real worker subprocess, on both stores."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from loom.cli import main
from tests.e2e.conftest import wait_serving


def _cli(db: Any, *args: str) -> Result:
    command, *rest = args
    return CliRunner().invoke(main, ["actor", command, *rest, "--db", str(db)])


async def test_actor_commands(tmp_path: Path, any_db: Any, spawn_worker: Any) -> None:
    spawn_worker(any_db, "--app", "tests.e2e.actor_app", app=None)
    await wait_serving(tmp_path / "worker-0.log")
    sent = await asyncio.to_thread(_cli, any_db, "send", "Ledger", "k1", "add", "--payload", "0")
    assert sent.exit_code == 0, sent.output
    asked = await asyncio.to_thread(
        _cli, any_db, "ask", "Ledger", "k1", "add", "--payload", "1", "--timeout", "120"
    )
    assert asked.exit_code == 0, asked.output
    assert json.loads(asked.stdout) == 2
    listed = await asyncio.to_thread(_cli, any_db, "list", "--json")
    assert [a["key"] for a in json.loads(listed.stdout)["actors"]] == ["k1"]
    inspected = await asyncio.to_thread(_cli, any_db, "inspect", "Ledger", "k1", "--json")
    summary = json.loads(inspected.stdout)
    assert summary["status"] == "RUNNING" and summary["state"]["ids"] == [0, 1]
    assert summary["handled"] == 2 and summary["events"] > 0
    unknown = await asyncio.to_thread(
        _cli, any_db, "ask", "Ledger", "k1", "nope", "--timeout", "120"
    )
    assert unknown.exit_code == 1
    assert (
        unknown.stderr.startswith("ActorHandlerError: ") and "no handler 'nope'" in unknown.stderr
    )
    bad = await asyncio.to_thread(_cli, any_db, "send", "Ledger", "k1", "add", "--payload", "{")
    assert bad.exit_code == 1 and "InvalidInputError" in bad.stderr
    missing = await asyncio.to_thread(_cli, any_db, "inspect", "Ledger", "nobody")
    assert missing.exit_code == 1 and "WorkflowNotFoundError" in missing.stderr
