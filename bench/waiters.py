"""What a process of waiting handles costs while other processes own the work (SQLite).

Handles here await `result()` of workflows no worker in this process runs, so only the
watcher's fallback poll can see their closes. Two ways of polling, alternated in one run:
  status    one status read of every waiting handle per poll (backing off 0.1 -> 1 s): what
            a store that does not number its closes still does (the SQLite one did)
  numbered  `closed_since`: PRAGMA data_version, and the closes since the last mark only
            when another connection committed (polling every 0.1 s)
each at 10 and 1,000 waiters, with nothing else committing (idle) and with another
connection committing an unrelated row every 10 ms (busy: the change counter moves, no
waited workflow closes). Per poll: statements, VM instructions and rows returned on the
client's connection (counts noise cannot move); per second: polls and client CPU ms.

Usage: python bench/waiters.py [--waiters 10 1000] [--seconds 3] [--reps 2] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loom import client
from loom.client import WorkflowHandle
from loom.sqlite_store import SQLiteConnection, SQLiteStore
from loom.store import NewWorkflow


class Counting:
    """The writer connection's statements, VM instructions and rows, and the polls."""

    def __init__(self) -> None:
        self.statements = 0
        self.steps = 0
        self.rows = 0
        self.polls = 0

    def snapshot(self) -> tuple[int, int, int, int]:
        return self.statements, self.steps, self.rows, self.polls


async def instrument(store: SQLiteStore, counts: Counting) -> None:
    def statement(_: str) -> None:
        counts.statements += 1

    def step() -> int:
        counts.steps += 1
        return 0

    async def install(conn: SQLiteConnection) -> None:
        conn._conn.set_trace_callback(statement)
        conn._conn.set_progress_handler(step, 1)

    await store._writer.submit(install, (), False)
    scan, statuses = store.closed_since, store.get_statuses

    async def counted_scan(*args: Any) -> Any:
        result = await scan(*args)
        counts.polls += 1
        counts.rows += len(result.workflow_ids)
        return result

    async def counted_statuses(workflow_ids: Any) -> Any:
        result = await statuses(workflow_ids)
        counts.polls += 1  # the handles' own reads at start fall before the window
        counts.rows += len(result)
        return result

    store.closed_since = counted_scan  # type: ignore[method-assign]
    store.get_statuses = counted_statuses  # type: ignore[method-assign]


class StatusPolled(SQLiteStore):
    """The SQLite store as handles polled it before it numbered closes."""

    @property
    def is_numbering_closes(self) -> bool:
        return False


class Committer(threading.Thread):
    """Another connection committing an unrelated row every 10 ms (`busy`)."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.stop = threading.Event()

    def run(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None)
        conn.execute("PRAGMA busy_timeout = 10000")
        conn.execute("CREATE TABLE IF NOT EXISTS bench_noise (n INTEGER)")
        while not self.stop.wait(0.01):
            conn.execute("INSERT INTO bench_noise VALUES (1)")
        conn.close()


async def measure(
    path: Path, mode: str, waiters: int, busy: bool, seconds: float
) -> dict[str, float]:
    store = SQLiteStore(path) if mode == "numbered" else StatusPolled(path)
    counts = Counting()
    await instrument(store, counts)
    noise = Committer(path) if busy else None
    try:
        tasks = [
            asyncio.create_task(WorkflowHandle(f"parked-{n}", store).result())
            for n in range(waiters)
        ]
        watcher = client._watcher(store)
        while len(watcher._waiting) < waiters:
            await asyncio.sleep(0.05)
        if noise is not None:
            noise.start()
        await asyncio.sleep(1.5)  # the status poll's back-off reaches its 1 s
        before, cpu, wall = counts.snapshot(), time.process_time(), time.perf_counter()
        await asyncio.sleep(seconds)
        after, cpu, wall = counts.snapshot(), time.process_time() - cpu, time.perf_counter() - wall
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        if noise is not None:
            noise.stop.set()
            noise.join()
        await store.close()
    statements, steps, rows, polls = (a - b for a, b in zip(after, before, strict=True))
    polls = max(polls, 1)
    return {
        "polls_per_s": polls / wall,
        "statements_per_poll": statements / polls,
        "vm_steps_per_poll": steps / polls,
        "rows_per_poll": rows / polls,
        "cpu_ms_per_s": cpu * 1000 / wall,
    }


async def park(path: Path, count: int) -> None:
    store = SQLiteStore(path)
    for n in range(count):
        await store.create_workflow(
            NewWorkflow(
                workflow_id=f"parked-{n}",
                workflow_name="Parked",
                workflow_version="1",
                input={},
                state={},
                source_hash="h",
                total_steps=1,
                seed=n,
            )
        )
    await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--waiters", type=int, nargs="+", default=[10, 1000])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "loom.db"
        asyncio.run(park(path, max(args.waiters)))
        for _ in range(args.reps):
            for busy in (False, True):
                for waiters in args.waiters:
                    for mode in ("status", "numbered"):  # alternated, same run
                        key = f"{mode} {'busy' if busy else 'idle'} {waiters}"
                        figures = asyncio.run(measure(path, mode, waiters, busy, args.seconds))
                        results.setdefault(key, []).append(figures)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"python {sys.version.split()[0]}; sqlite {sqlite3.sqlite_version}; {args.reps} reps")
    print(f"{'case':24} {'polls/s':>8} {'stmts/poll':>10} {'VM/poll':>9} {'rows/poll':>9} cpu ms/s")
    for key, runs in results.items():
        med = {name: statistics.median(run[name] for run in runs) for name in runs[0]}
        cpu = [run["cpu_ms_per_s"] for run in runs]
        print(
            f"{key:24} {med['polls_per_s']:8.2f} {med['statements_per_poll']:10.1f} "
            f"{med['vm_steps_per_poll']:9.0f} {med['rows_per_poll']:9.1f} "
            f"{min(cpu):.2f}-{max(cpu):.2f}"
        )


if __name__ == "__main__":
    main()
