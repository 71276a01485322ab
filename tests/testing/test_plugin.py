"""The pytest plugin as a user meets it: a generated project whose only loom test machinery
is the `loom_env` fixture, run by pytest in a subprocess under strict settings."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import tomllib
from importlib.metadata import entry_points
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

USER_TESTS = """
from datetime import timedelta

import pytest

import loom


@loom.activity
async def remind(name: str) -> str:
    return f"reminded {name}"


@loom.workflow(name="Trial")
class Trial(loom.Workflow[dict, dict]):
    @loom.step
    async def run(self, ctx):
        await ctx.sleep(timedelta(days=30))
        ctx.state.reminder = await ctx.activity(remind, ctx.input["user"])
        try:
            ctx.state.upgrade = await ctx.wait_for_signal("upgrade", timeout=timedelta(days=7))
        except TimeoutError:
            ctx.state.upgrade = None


MARK
async def test_trial_expires_unanswered(loom_env):
    handle = await loom_env.start(Trial, {"user": "ada"})
    state = await handle.result(timeout=30)
    assert state == {"reminder": "reminded ada", "upgrade": None}


MARK
async def test_trial_upgraded_after_the_reminder(loom_env):
    handle = await loom_env.start(Trial, {"user": "bo"})
    await loom_env.sleep(timedelta(days=31))
    assert (await handle.state())["reminder"] == "reminded bo"
    await handle.signal("upgrade", plan="pro")
    assert (await handle.result(timeout=30))["upgrade"] == {"plan": "pro"}


@pytest.mark.loom(time_skipping=False)
MARK
async def test_marker_turns_skipping_off(loom_env):
    assert loom_env.time_skipping is False
"""


@pytest.mark.parametrize("mode", ["auto", "strict"])
def test_generated_project_passes_with_only_the_fixture(tmp_path: Path, mode: str) -> None:
    mark = "@pytest.mark.asyncio" if mode == "strict" else ""
    (tmp_path / "test_trial.py").write_text(USER_TESTS.replace("MARK\n", f"{mark}\n"))
    (tmp_path / "pytest.ini").write_text(
        textwrap.dedent(f"""\
            [pytest]
            asyncio_mode = {mode}
            asyncio_default_fixture_loop_scope = function
            filterwarnings = error
            addopts = --strict-markers --strict-config
            """)
    )
    result = _pytest(tmp_path, "-W", "error")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout


def test_failing_user_test_fails_the_run(tmp_path: Path) -> None:
    """The fixture does not swallow failures: a wrong expectation is a failed test."""
    wrong = USER_TESTS.replace('"upgrade": None}', '"upgrade": "pro"}').replace("MARK\n", "")
    (tmp_path / "test_trial.py").write_text(wrong)
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
        "filterwarnings = error\n"
    )
    result = _pytest(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 failed, 2 passed" in result.stdout


def test_package_registers_the_plugin_by_entry_point() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["entry-points"]["pytest11"] == {"loom": "loom._pytest"}


def _plugin_args() -> list[str]:
    """Installed metadata older than this checkout lacks the entry point: load it by name."""
    if any(ep.value == "loom._pytest" for ep in entry_points(group="pytest11")):
        return []
    return ["-p", "loom._pytest"]


def _pytest(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """pytest run in `project` by a fresh interpreter, as a user's CI would."""
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args, *_plugin_args()],
        cwd=project,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
