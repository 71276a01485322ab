"""Instructions per workflow and thread, counted by valgrind: a figure noise cannot move.

On a shared 2-core box workflows/s and even CPU time move by tens of percent between runs of
the same tree; the instructions executed do not. This runs `bench/throughput.py`'s BenchOrder
workflow (3 native activities, durable SQLite, worker in this process) under callgrind twice,
for a small and a large count, and prints the difference divided by the extra workflows, split
into the event-loop thread (client and worker) and the store's writer thread. Start-up and
warm-up cancel out in the difference. `--lone` starts each workflow after the previous one
finished (the latency case: nothing to batch, every commit its own transaction).

`--tree PATH` (repeatable) measures other checkouts of this repository in the same run, e.g. a
`git worktree add /tmp/before <commit>`, so a change can be judged against its baseline.
Needs `valgrind` (Debian package) and takes a few minutes: callgrind runs Python ~50x slower.

Usage: python bench/instructions.py [--small 100] [--large 700] [--lone] [--tree PATH ...]
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def workload(tree: str, count: int, lone: bool) -> None:
    """The measured program (run under callgrind): a warm-up, then `count` workflows."""
    sys.path.insert(0, tree)
    spec = importlib.util.spec_from_file_location("bench_throughput", f"{tree}/bench/throughput.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    loom = bench.loom

    async def run(database: str) -> None:
        loom.configure(database=database)
        async with bench.bench_worker():
            await bench.throughput(50)
            if count and lone:
                await bench.latency(count)
            elif count:
                await bench.throughput(count)

    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(run(os.path.join(tmp, "loom.db")))


def thread_totals(out: str) -> dict[int, int]:
    """Instructions by thread number from callgrind's `--separate-threads` files."""
    totals: dict[int, int] = {}
    for path in glob.glob(f"{out}-*"):
        text = Path(path).read_text(errors="replace")
        match = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
        if match:
            totals[int(path.rsplit("-", 1)[1])] = int(match[1])
    return totals


def measure(tree: str, count: int, workdir: str, lone: bool) -> dict[int, int]:
    out = os.path.join(workdir, f"cg-{abs(hash(tree))}-{count}")
    subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--separate-threads=yes",
            f"--callgrind-out-file={out}",
            sys.executable,
            __file__,
            "--workload",
            tree,
            str(count),
            *(["--lone"] if lone else []),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return thread_totals(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=100)
    parser.add_argument("--large", type=int, default=700)
    parser.add_argument("--tree", action="append", default=[], help="another checkout")
    parser.add_argument("--lone", action="store_true", help="one workflow at a time")
    parser.add_argument("--workload", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.workload:
        workload(args.workload[0], int(args.workload[1]), args.lone)
        return
    if shutil.which("valgrind") is None:
        parser.error("needs valgrind (apt-get install valgrind)")
    extra = args.large - args.small
    how = "one at a time" if args.lone else "started together"
    print(f"instructions per workflow ({args.large} - {args.small} workflows {how}, callgrind)")
    with tempfile.TemporaryDirectory() as workdir:
        for tree in [str(ROOT), *args.tree]:
            small = measure(tree, args.small, workdir, args.lone)
            large = measure(tree, args.large, workdir, args.lone)
            per = {t: (large[t] - small.get(t, 0)) / extra for t in large}
            # Thread 1 is the event loop; the busiest other one is the store's writer thread.
            loop = per.get(1, 0.0)
            store = max((v for t, v in per.items() if t != 1), default=0.0)
            print(
                f"{tree}: event loop {loop / 1e6:.2f} M, store thread {store / 1e6:.2f} M, "
                f"process {sum(per.values()) / 1e6:.2f} M"
            )


if __name__ == "__main__":
    main()
