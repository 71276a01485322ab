"""Waiting for SQLite's write lock across processes: the writer's short retries against
SQLite's own busy handler, alternated in one run.

N processes (1, 2, 4) each commit 20-row batches on one WAL+FULL database as fast as they
can, with 0.5 ms of their own work between batches (what a worker does between commits):
  retry     the writer's `_begin_immediate` (busy_timeout 0, BEGIN IMMEDIATE retried after
            0.1 ms doubling to 1 ms)
  sqlite    BEGIN IMMEDIATE under busy_timeout 10 s (SQLite sleeps 1, 2, 5, 10, 15... ms)
Per case: commits/s, ms waited for the lock per commit, CPU us per commit.

Usage: python bench/lock_wait.py [--seconds 3] [--reps 2]
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loom.sqlite_store import _writer


def commit_loop(path: str, mode: str, seconds: float, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    conn = _writer.connect(path)
    if mode == "retry":
        conn.execute("PRAGMA busy_timeout = 0")
    else:
        _writer.LOCK_RETRY_S = None
    commits, waited, cpu = 0, 0.0, time.process_time()
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        _writer._begin_immediate(conn)
        waited += time.perf_counter() - start
        conn.executemany("INSERT INTO rows (payload) VALUES (?)", [("x" * 40,)] * 20)
        conn.execute("COMMIT")
        commits += 1
        time.sleep(0.0005)
    out.put((commits, waited, time.process_time() - cpu))


def run(path: str, mode: str, processes: int, seconds: float) -> tuple[float, float, float]:
    out: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
    procs = [
        multiprocessing.Process(target=commit_loop, args=(path, mode, seconds, out))
        for _ in range(processes)
    ]
    for proc in procs:
        proc.start()
    results = [out.get() for _ in procs]
    for proc in procs:
        proc.join()
    commits = sum(r[0] for r in results)
    waited = sum(r[1] for r in results)
    cpu = sum(r[2] for r in results)
    return commits / seconds, waited * 1000 / commits, cpu * 1e6 / commits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--reps", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "lock.db")
        conn = _writer.connect(path)
        conn.execute("CREATE TABLE rows (id INTEGER PRIMARY KEY, payload TEXT)")
        conn.close()
        for rep in range(args.reps):
            for processes in (1, 2, 4):
                for mode in ("retry", "sqlite"):
                    rate, wait_ms, cpu_us = run(path, mode, processes, args.seconds)
                    print(
                        f"rep {rep} processes-{processes} {mode:6} {rate:7.0f} commits/s  "
                        f"lock wait {wait_ms:6.3f} ms/commit  cpu {cpu_us:5.0f} us/commit",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
