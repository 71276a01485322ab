"""CLI start-up against a bare interpreter, in the same run (wall time, median of N).

Cases: `python -c pass` (the baseline), `import loom`, `loom --help`, `loom list` on an empty
database (a read-only command). Target (issue 16): `loom --help` <= 4x the baseline.

Usage: python bench/cli_startup.py [--runs 10]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def median_wall(command: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(
            command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True
        )
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        db = str(Path(folder) / "empty.db")
        subprocess.run(
            [sys.executable, "-m", "loom", "init", "--db", db], capture_output=True, check=True
        )
        cases = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "import loom": [sys.executable, "-c", "import loom"],
            "loom --help": [sys.executable, "-m", "loom", "--help"],
            "loom list": [sys.executable, "-m", "loom", "list", "--db", db],
        }
        base = 0.0
        for name, command in cases.items():
            wall = median_wall(command, args.runs)
            base = base or wall
            print(f"{name:16s} {wall * 1000:7.1f} ms  {wall / base:5.2f}x the bare interpreter")


if __name__ == "__main__":
    main()
