"""End to end through processes: `loom activity register` a C reactor built from source,
then a worker subprocess runs a workflow that calls it by version range."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.e2e.conftest import ROOT
from tests.e2e.wasm_app import WordStats
from tests.wasm_activities.build import EXAMPLES_DIR, build_example


@pytest.mark.timeout(120)
async def test_registered_c_activity_runs_in_a_worker_subprocess(any_db, spawn_worker) -> None:
    db_path = any_db  # module bytes live in the database on both backends
    build_example("word-count")
    registered = subprocess.run(
        [
            sys.executable,
            "-m",
            "loom",
            "activity",
            "register",
            str(EXAMPLES_DIR / "word-count" / "activity.toml"),
            "--db",
            str(db_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert registered.returncode == 0, registered.stderr
    assert registered.stdout.startswith("word-count@1.0.0 sha256:")
    handle = await WordStats.start({"text": "one two three, four"})
    spawn_worker(db_path, app="tests.e2e.wasm_app")
    assert await handle.result(timeout=60) == {"counts": {"words": 4, "chars": 19}}
