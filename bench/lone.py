"""A lone workflow: its latency in raw commit times, its fsyncs, and its SQL alone.

A workflow started while nothing else runs shares no commit: every step is a transaction of its
own, so the figure to watch is latency against what one commit costs on this disk. Cases
(`bench/throughput.py`'s BenchOrder, 3 native activities, durable SQLite, worker in this
process, each workflow started after the previous one finished):

  raw commit   a bare sqlite3 loop (WAL, synchronous=FULL): one single-row commit, the unit
  latency      start -> result, p50/p99, in ms and in raw commit times
  fsyncs       fsync + fdatasync calls per workflow: this script re-run under
               `strace -f -c` for a small and a large count, the difference over the extra
               workflows (start-up cancels out); skipped without strace
  sql alone    every statement the engine sent SQLite during the latency runs (transactions,
               parameters and order kept), replayed on a fresh database by a bare loop: what
               the SQL costs with no engine around it, i.e. the floor this schema sets
  engine       latency minus the SQL alone: Python, thread hand-overs, the event loop

Usage: python bench/lone.py [--workflows 300] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import throughput as bench

import loom
from loom.sqlite_store import _writer

WARM_UP = 30
Statement = tuple[str, tuple[Any, ...]]


class Recorder:
    """A sqlite3 connection that writes down every statement sent through it."""

    def __init__(self, conn: sqlite3.Connection, log: list[Statement]) -> None:
        self._conn = conn
        self._log = log

    def execute(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        self._log.append((sql, tuple(params)))
        return self._conn.execute(sql, params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


@contextlib.contextmanager
def recording(log: list[Statement]) -> Iterator[None]:
    """Make the store's writer connection a Recorder (the connection it opens next)."""
    plain = _writer.connect
    _writer.connect = lambda path: Recorder(plain(path), log)  # type: ignore[assignment,return-value]
    try:
        yield
    finally:
        _writer.connect = plain


async def lone_run(db: Path, count: int, log: list[Statement] | None) -> tuple[list[float], int]:
    """Warm up, then `count` workflows one at a time; their latencies, and where in `log` the
    measured ones begin."""
    loom.configure(database=db)
    async with bench.bench_worker():
        await bench.latency(WARM_UP)
        mark = len(log) if log is not None else 0
        times = await bench.latency(count)
    return times, mark


def replay(log: list[Statement], mark: int, count: int) -> float:
    """Run `log` on a fresh database (schema statements included); ms per workflow of the
    statements after `mark`."""
    with tempfile.TemporaryDirectory() as tmp:
        conn = _writer.connect(os.path.join(tmp, "replay.db"))
        try:
            for sql, params in log[:mark]:
                conn.execute(sql, params).fetchall()
            start = time.perf_counter()
            for sql, params in log[mark:]:
                conn.execute(sql, params).fetchall()  # to the end: RETURNING completes
            return (time.perf_counter() - start) * 1000 / count
        finally:
            conn.close()


def fsyncs(count: int) -> int | None:
    """fsync + fdatasync calls of this script's workload for `count` workflows (strace)."""
    out = subprocess.run(
        [
            "strace",
            "-f",
            "-c",
            "-e",
            "trace=fsync,fdatasync",
            sys.executable,
            __file__,
            "--workload",
            str(count),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stderr
    calls = [
        int(m[1])
        for m in re.finditer(
            r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?f(?:data)?sync$", out, re.M
        )
    ]
    return sum(calls) if calls else None


def fsyncs_per_workflow(small: int, large: int) -> float | None:
    if shutil.which("strace") is None:
        return None
    few, many = fsyncs(small), fsyncs(large)
    if few is None or many is None:
        return None
    return (many - few) / (large - small)


def workload(count: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(lone_run(Path(tmp) / "loom.db", count, None))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workflows", type=int, default=300)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--workload", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.workload is not None:
        workload(args.workload)
        return
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        commits, _ = bench.sqlite_baseline(Path(tmp) / "raw.db")
        commit_ms = 1000 / commits
        log: list[Statement] = []
        with recording(log):
            times, mark = asyncio.run(lone_run(Path(tmp) / "loom.db", args.workflows, log))
    p50 = bench.pct(times, 0.5)
    sql_ms = replay(log, mark, args.workflows)
    results.update(
        raw_commit_ms=commit_ms,
        latency_p50_ms=p50,
        latency_p99_ms=bench.pct(times, 0.99),
        latency_p50_commits=p50 / commit_ms,
        statements_per_workflow=(len(log) - mark) / args.workflows,
        sql_alone_ms=sql_ms,
        sql_alone_commits=sql_ms / commit_ms,
        engine_ms=p50 - sql_ms,
        fsyncs_per_workflow=fsyncs_per_workflow(20, 20 + max(args.workflows // 3, 50)),
    )
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"machine: {os.cpu_count()} cores; python {sys.version.split()[0]}")
    print(f"raw commit   {commit_ms:.3f} ms (WAL+FULL, one row)")
    print(
        f"latency      p50 {p50:.2f} ms = {results['latency_p50_commits']:.1f} raw commits  "
        f"p99 {results['latency_p99_ms']:.2f} ms (target p50 <= 4.5 raw commits)"
    )
    per = results["fsyncs_per_workflow"]
    print(
        "fsyncs       "
        + ("(strace not found)" if per is None else f"{per:.2f} per workflow (target <= 4.2)")
    )
    print(
        f"sql alone    {sql_ms:.2f} ms = {results['sql_alone_commits']:.1f} raw commits "
        f"({results['statements_per_workflow']:.1f} statements per workflow, BEGIN/COMMIT included)"
    )
    print(f"engine       {results['engine_ms']:.2f} ms = latency p50 - sql alone")


if __name__ == "__main__":
    main()
