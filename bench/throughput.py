"""Engine throughput and latency on durable SQLite, with the raw SQLite baseline beside it.

Cases (one process: the client and one worker share it, as `async with Worker` does):
  sqlite-commit   raw sqlite3 WAL+FULL: single-row commits/s and rows/s in 100-row batches
  throughput      workflows/s for N workflows of 3 native activities each (start -> complete)
  latency         single workflow start -> result, p50/p99 (nothing else running)
  per-step        cost per activity step in a 10-step and a 1,000-step workflow (ratio)
  replay          cold replay of a ~1,000-event history (WorkflowRun.apply), p50

With --processes (SQLite): processes-N, workflows/s with N = 1, 2, 4 `loom worker`
subprocesses and the client here (no worker of its own), alternated in the same run: `now`;
`sqlite-busy-handler`, workers waiting for the write lock with SQLite's busy handler; and
`status-poll`, the client's handles reading every waiter's status per poll (both as before).

With --db postgresql://... (a fresh schema in that database, dropped afterwards):
  postgres-commit raw asyncpg: single-row commits/s on one connection
  cpu/workflow    this process's CPU time per workflow (client, worker and DB thread all in
                  it), PostgreSQL against SQLite in alternating rounds, and the ratio
  throughput      workflows/s with the worker in this process (as above)
  processes-N     workflows/s with N = 1, 2, 4 `loom worker` subprocesses (the client here)
  latency         single workflow start -> result, p50/p99, worker in this process

Usage: python bench/throughput.py [--workflows 3000] [--reps 3] [--json]
       python bench/throughput.py --db postgresql://postgres@127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import loom
from loom.client import database_url, get_store
from loom.replay import WorkflowRun
from loom.sqlite_store import SQLiteStore, _writer

ROOT = Path(__file__).resolve().parents[1]
LOCK_WAIT = "LOOM_BENCH_LOCK_WAIT"
"""Set to `sqlite` in a worker this bench spawns: it waits for the write lock with SQLite's
own busy handler (the baseline of processes-N), not the writer's short retries."""
if os.environ.get(LOCK_WAIT) == "sqlite":
    _writer.LOCK_RETRY_S = None


@loom.activity
async def reserve(item: int) -> int:
    return item + 1


@loom.activity
async def charge(amount: int) -> int:
    return amount * 2


@loom.activity
async def notify(total: int) -> bool:
    return total > 0


@loom.workflow(name="BenchOrder")
class BenchOrder(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
    @loom.step
    async def run(self, ctx):  # type: ignore[no-untyped-def]
        item = await ctx.activity(reserve, ctx.input["n"])
        total = await ctx.activity(charge, item)
        ctx.state.sent = await ctx.activity(notify, total)


@loom.workflow(name="BenchSteps")
class BenchSteps(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
    @loom.step
    async def run(self, ctx):  # type: ignore[no-untyped-def]
        value = 0
        for _ in range(ctx.input["steps"]):
            value = await ctx.activity(reserve, value)
        ctx.state.value = value


def sqlite_baseline(path: Path, seconds: float = 1.0) -> tuple[float, float]:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, payload TEXT)")
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        conn.execute("BEGIN")
        conn.execute("INSERT INTO t (payload) VALUES ('x')")
        conn.execute("COMMIT")
        n += 1
    commits = n / (time.perf_counter() - start)
    rows, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO t (payload) VALUES (?)", [("x",)] * 100)
        conn.execute("COMMIT")
        rows += 100
    conn.close()
    return commits, rows / (time.perf_counter() - start)


async def throughput(count: int) -> float:
    start = time.perf_counter()
    handles = await asyncio.gather(*(BenchOrder.start({"n": i}) for i in range(count)))
    await asyncio.gather(*(h.result(timeout=600) for h in handles))
    return count / (time.perf_counter() - start)


async def latency(samples: int) -> list[float]:
    times = []
    for i in range(samples):
        start = time.perf_counter()
        handle = await BenchOrder.start({"n": i})
        await handle.result(timeout=60)
        times.append((time.perf_counter() - start) * 1000)
    return times


async def per_step(steps: int) -> tuple[float, str]:
    start = time.perf_counter()
    handle = await BenchSteps.start({"steps": steps})
    await handle.result(timeout=600)
    return (time.perf_counter() - start) * 1000 / steps, handle.workflow_id


async def replay(workflow_id: str, reps: int) -> tuple[float, int]:
    events = await get_store().list_events(workflow_id)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        run = WorkflowRun(BenchSteps.compile(), workflow_id)
        run.apply(events)
        times.append((time.perf_counter() - start) * 1000)
        assert run.failure is None
    return statistics.median(times), len(events)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def bench_worker() -> loom.Worker:
    return loom.Worker(
        workflows=[BenchOrder, BenchSteps], activities=[reserve, charge, notify], concurrency=500
    )


async def median_throughput(args: argparse.Namespace) -> float:
    await throughput(200)  # warm-up
    return statistics.median([await throughput(args.workflows) for _ in range(args.reps)])


async def throughput_and_latency(args: argparse.Namespace, results: dict[str, Any]) -> None:
    results["throughput_wf_per_s"] = await median_throughput(args)
    lat = await latency(args.latency_samples)
    results["latency_p50_ms"] = pct(lat, 0.5)
    results["latency_p99_ms"] = pct(lat, 0.99)


async def main_async(args: argparse.Namespace, db: Path) -> dict[str, Any]:
    loom.configure(database=db)
    results: dict[str, Any] = {}
    async with bench_worker():
        await throughput_and_latency(args, results)
        small = statistics.median([(await per_step(10))[0] for _ in range(5)])
        large, _ = await per_step(1000)
        results["per_step_10_ms"] = small
        results["per_step_1000_ms"] = large
        results["per_step_ratio"] = large / small
        _, replay_id = await per_step(499)
        results["replay_ms"], results["replay_events"] = await replay(replay_id, 11)
    return results


# -- PostgreSQL ------------------------------------------------------------------------------


async def postgres_baseline(url: str, seconds: float = 1.0) -> float:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CREATE TABLE bench_raw (id BIGSERIAL PRIMARY KEY, payload TEXT)")
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            async with conn.transaction():
                await conn.execute("INSERT INTO bench_raw (payload) VALUES ('x')")
            n += 1
        return n / (time.perf_counter() - start)
    finally:
        await conn.close()


def process_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process
    return usage.ru_utime + usage.ru_stime


async def cpu_per_workflow(database: Path | str, count: int) -> float:
    """Milliseconds of this process's CPU per workflow, the worker in this process."""
    loom.configure(database=database)
    try:
        async with bench_worker():
            await throughput(200)  # warm-up: pool, caches, compiled workflows
            start = process_cpu_s()
            await throughput(count)
            return (process_cpu_s() - start) * 1000 / count
    finally:
        loom.configure(database=None)


async def cpu_rounds(args: argparse.Namespace, url: str, results: dict[str, Any]) -> None:
    """SQLite and PostgreSQL in turn, so both see the same load from whatever else runs."""
    sqlite, postgres = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.reps):
            sqlite.append(await cpu_per_workflow(Path(tmp) / f"cpu-{round_}.db", args.workflows))
            postgres.append(await cpu_per_workflow(url, args.workflows))
    results["cpu_ms_per_wf_sqlite"] = sqlite
    results["cpu_ms_per_wf_postgres"] = postgres
    results["cpu_ratio"] = [p / s for p, s in zip(postgres, sqlite, strict=True)]


def spawn_workers(
    url: str | Path, count: int, env: dict[str, str] | None = None
) -> list[subprocess.Popen[bytes]]:
    command = [sys.executable, "-m", "loom", "worker", "--app", "throughput", "--db", str(url)]
    return [
        subprocess.Popen(
            [*command, "--concurrency", "500"],
            cwd=ROOT / "bench",
            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
            stderr=subprocess.DEVNULL,
        )
        for _ in range(count)
    ]


async def processes_throughput(
    args: argparse.Namespace, processes: int, env: dict[str, str] | None = None
) -> float:
    procs = spawn_workers(database_url(), processes, env)
    try:
        return await median_throughput(args)  # the warm-up waits for every worker
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait()


SQLITE_MODES = {
    "now": ({}, True),
    "sqlite-busy-handler": ({LOCK_WAIT: "sqlite"}, True),
    "status-poll": ({}, False),
}
"""processes-N variants: (worker environment, whether the client polls numbered closes)."""


async def sqlite_processes(args: argparse.Namespace, db: Path) -> dict[str, Any]:
    loom.configure(database=db)
    results: dict[str, list[float]] = {}
    numbering = SQLiteStore.is_numbering_closes
    try:
        for _ in range(args.reps):
            for processes in (1, 2, 4):
                for mode, (env, numbered) in SQLITE_MODES.items():  # alternated, same run
                    polls_statuses = property(lambda self: False)
                    chosen = numbering if numbered else polls_statuses
                    SQLiteStore.is_numbering_closes = chosen  # type: ignore[method-assign]
                    rate = await processes_throughput(args, processes, env)
                    results.setdefault(f"processes_{processes}_{mode}", []).append(rate)
    finally:
        SQLiteStore.is_numbering_closes = numbering  # type: ignore[method-assign]
    return results


async def postgres_async(args: argparse.Namespace, url: str) -> dict[str, Any]:
    loom.configure(database=url)
    results: dict[str, Any] = {"postgres_commits_per_s": await postgres_baseline(url)}
    await cpu_rounds(args, url, results)
    loom.configure(database=url)
    async with bench_worker():
        await throughput_and_latency(args, results)
    for processes in (1, 2, 4):
        results[f"processes_{processes}_wf_per_s"] = await processes_throughput(args, processes)
    return results


def run_sql(url: str, statement: str) -> None:
    import asyncpg

    async def execute() -> None:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(execute())


def postgres_main(args: argparse.Namespace) -> None:
    schema = f"loom_bench_{uuid.uuid4().hex[:8]}"
    run_sql(args.db, f"CREATE SCHEMA {schema}")
    url = f"{args.db}{'&' if '?' in args.db else '?'}search_path={schema}"
    try:
        results = asyncio.run(postgres_async(args, url))
    finally:
        loom.configure(database=None)
        run_sql(args.db, f"DROP SCHEMA {schema} CASCADE")
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"machine: {os.cpu_count()} cores; python {sys.version.split()[0]}; {args.db}")
    print(f"postgres-commit raw asyncpg {results['postgres_commits_per_s']:8.0f} commits/s")
    sqlite, postgres = results["cpu_ms_per_wf_sqlite"], results["cpu_ms_per_wf_postgres"]
    ratios = results["cpu_ratio"]
    print(
        f"cpu/workflow   postgres {statistics.median(postgres):.2f} ms  sqlite "
        f"{statistics.median(sqlite):.2f} ms  ratio {statistics.median(ratios):.2f} "
        f"({min(ratios):.2f}-{max(ratios):.2f} over {len(ratios)} alternating rounds; "
        "target <= 1.7)"
    )
    print(
        f"throughput     {results['throughput_wf_per_s']:8.0f} workflows/s "
        "(3 activities each; worker in this process)"
    )
    for processes in (1, 2, 4):
        rate = results[f"processes_{processes}_wf_per_s"]
        print(f"processes-{processes}    {rate:8.0f} workflows/s ({processes} worker processes)")
    print(
        f"latency        p50 {results['latency_p50_ms']:.2f} ms  p99 "
        f"{results['latency_p99_ms']:.2f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workflows", type=int, default=3000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--latency-samples", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--db", help="postgresql://... to measure the PostgreSQL backend")
    parser.add_argument("--processes", action="store_true", help="SQLite worker subprocesses")
    args = parser.parse_args()
    if args.db:
        if not args.db.startswith(("postgres://", "postgresql://")):
            parser.error("--db takes a postgresql:// URL; the default run measures SQLite")
        postgres_main(args)
        return
    if args.processes:
        with tempfile.TemporaryDirectory() as tmp:
            results = asyncio.run(sqlite_processes(args, Path(tmp) / "loom.db"))
            loom.configure(database=None)
        if args.json:
            print(json.dumps(results, indent=2))
            return
        print(f"machine: {os.cpu_count()} cores; python {sys.version.split()[0]}; SQLite")
        for key, rates in results.items():
            mode = key.split("_", 2)[2]
            baseline = results[key.replace(mode, "now")]
            ratios = [r / b for r, b in zip(rates, baseline, strict=True)]
            print(
                f"{key:34} {statistics.median(rates):6.0f} workflows/s "
                f"({min(rates):.0f}-{max(rates):.0f}; vs now x{min(ratios):.2f}-{max(ratios):.2f})"
            )
        return
    with tempfile.TemporaryDirectory() as tmp:
        commits, rows = sqlite_baseline(Path(tmp) / "raw.db")
        results = asyncio.run(main_async(args, Path(tmp) / "loom.db"))
        loom.configure(database=None)
    results["sqlite_commits_per_s"] = commits
    results["sqlite_rows_per_s_batched"] = rows
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"machine: {os.cpu_count()} cores; python {sys.version.split()[0]}")
    print(f"sqlite-commit  raw WAL+FULL {commits:8.0f} commits/s   {rows:9.0f} rows/s (batched)")
    print(
        f"throughput     {results['throughput_wf_per_s']:8.0f} workflows/s (3 activities each; "
        f"target >= 1500)"
    )
    print(
        f"latency        p50 {results['latency_p50_ms']:.2f} ms  p99 "
        f"{results['latency_p99_ms']:.2f} ms (target p50 <= 3 ms)"
    )
    print(
        f"per-step       10 steps {results['per_step_10_ms']:.3f} ms/step  1000 steps "
        f"{results['per_step_1000_ms']:.3f} ms/step  ratio {results['per_step_ratio']:.2f} "
        f"(target <= 1.5)"
    )
    print(
        f"replay         {results['replay_events']} events in {results['replay_ms']:.2f} ms "
        f"(target <= 20 ms for 1000)"
    )


if __name__ == "__main__":
    main()
