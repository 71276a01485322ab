"""`python examples/onboarding_demo.py`, the README's second demo command, runs as documented."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(180)
def test_onboarding_demo_completes_one_and_compensates_the_other(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "examples/onboarding_demo.py", "--db", str(tmp_path / "demo.db")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].endswith(": waiting for email_verified; sending it")
    assert lines[1] == (
        "completed steps create-user-account, send-verification-email, wait-for-verification, "
        "provision, personalize-welcome, route-by-plan"
    )
    assert lines[2].startswith("welcome: Welcome aboard, Ada! Your pro workspace is ready")
    assert lines[4].endswith(
        "failed (ada@bounce.invalid bounced); compensated with delete-user-account "
        "{'user_id': 'usr-f8f28765'}"
    )
