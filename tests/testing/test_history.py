"""History export and replay: `loom history export` (a real CLI subprocess) writes what
`loom.testing.replay` and `loom replay FILE` check against the code; the golden histories
under tests/loom/histories use the same format."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from click.testing import CliRunner

import loom
import loom.testing
from examples.order import OrderWorkflow
from loom._export import HistoryFileError
from loom.cli import main

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "loom" / "histories"

SHOP = """
from datetime import timedelta

import loom


@loom.activity
async def reserve(item: str) -> str:
    return f"reserved {item}"


@loom.activity
async def release(item: str) -> str:
    return f"released {item}"


@loom.workflow(name="Shop")
class Shop(loom.Workflow[dict, dict]):
    @loom.step
    async def ship(self, ctx):
        ctx.state.first = await ctx.activity(FIRST, ctx.input["item"])
        await ctx.sleep(timedelta(days=2))
        ctx.state.second = await ctx.activity(release, ctx.input["item"])
"""


def _module(tmp_path: Path, name: str, first: str) -> ModuleType:
    """Write one version of the Shop workflow as a module (for the CLI's --app too)."""
    path = tmp_path / f"{name}.py"
    path.write_text(SHOP.replace("FIRST", first))
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def _loom(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "loom", *args,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path}"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return subprocess.CompletedProcess(args, process.returncode, stdout.decode(), stderr.decode())


@pytest.mark.timeout(120)
async def test_export_replays_for_the_same_code_and_not_for_changed_code(
    loom_env: loom.testing.WorkflowEnvironment, tmp_path: Path
) -> None:
    shipped = _module(tmp_path, "shop_v1", "reserve")
    handle = await loom_env.start(shipped.Shop, {"item": "box"}, workflow_id="shop-1")
    state = await handle.result(timeout=30)
    assert state == {"first": "reserved box", "second": "released box"}

    exported = tmp_path / "shop-1.json"
    done = await _loom(tmp_path, "history", "export", "shop-1", "--db", loom_env.database,
                       "--output", str(exported))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""  # the file is the result; stdout stays empty
    data = json.loads(exported.read_text())
    assert data["workflow"]["workflow_id"] == "shop-1"
    assert data["workflow"]["status"] == "COMPLETED"
    assert [e["kind"] for e in data["events"]][-1] == "WORKFLOW_COMPLETED"

    loom.testing.replay(shipped.Shop, exported)  # the same code: no error
    changed = _module(tmp_path, "shop_v2", "release")
    with pytest.raises(loom.NonDeterministicWorkflowError) as raised:
        loom.testing.replay(changed.Shop, exported)
    assert "reserve" in raised.value.expected
    assert "release" in raised.value.actual

    # `loom replay FILE` needs no database, only the code (no loom.db exists in tmp_path).
    same = await _loom(tmp_path, "replay", str(exported), "--app", "shop_v1")
    assert same.returncode == 0, same.stderr
    assert "1 ok, 0 non-deterministic" in same.stdout
    other = await _loom(tmp_path, "replay", str(exported), "--app", "shop_v2", "--json")
    assert other.returncode == 1, other.stderr
    report = json.loads(other.stdout)
    assert report["non_deterministic"] == 1
    assert report["workflows"][0]["workflow_id"] == "shop-1"


async def test_export_to_stdout_of_a_running_workflow_and_of_an_unknown_id(
    loom_env: loom.testing.WorkflowEnvironment, tmp_path: Path
) -> None:
    shipped = _module(tmp_path, "shop_v3", "reserve")
    handle = await loom_env.start(shipped.Shop, {"item": "crate"}, workflow_id="shop-2")
    await loom_env.sleep(60)  # the first activity ran; the two-day sleep has not passed
    assert await handle.status() is loom.WorkflowStatus.RUNNING
    done = await _loom(tmp_path, "history", "export", "shop-2", "--db", loom_env.database)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["workflow"]["status"] == "RUNNING"
    kinds = [e["kind"] for e in data["events"]]
    assert kinds[-1] == "TIMER_STARTED"  # the history so far: waiting on the two-day timer
    assert "TIMER_FIRED" not in kinds

    missing = await _loom(tmp_path, "history", "export", "nope", "--db", loom_env.database)
    assert missing.returncode == 1
    assert missing.stderr.startswith("WorkflowNotFoundError:")


def test_replay_refuses_a_file_that_is_not_an_export(tmp_path: Path) -> None:
    bare = tmp_path / "events.json"
    bare.write_text("[]")
    with pytest.raises(HistoryFileError, match="not a Loom history export"):
        loom.testing.replay(OrderWorkflow, bare)
    result = CliRunner().invoke(main, ["replay", str(bare), "--app", "examples.order"])
    assert result.exit_code == 1
    assert "HistoryFileError:" in result.output


def test_replay_refuses_a_history_of_another_workflow_type() -> None:
    with pytest.raises(ValueError, match="'CompatReplace', not of 'Order'"):
        loom.testing.replay(OrderWorkflow, GOLDEN / "state_update_merge.json")


def test_golden_order_history_replays_through_loom_testing() -> None:
    loom.testing.replay(OrderWorkflow, GOLDEN / "order_completed.json")
    result = CliRunner().invoke(
        main, ["replay", str(GOLDEN / "order_completed.json"), "--app", "examples.order"]
    )
    assert result.exit_code == 0, result.output
    assert "1 ok" in result.output
