"""The sandbox's worker pool: one warm thread for short calls, more only for long ones."""

from __future__ import annotations

import threading
import time

from wasm_activities._pool import IDLE_EXIT_S, WorkerPool


def _run(pool: WorkerPool, count: int, seconds: float) -> set[int]:
    threads: set[int] = set()
    done = threading.Semaphore(0)

    def job() -> None:
        time.sleep(seconds)
        threads.add(threading.get_ident())
        done.release()

    for _ in range(count):
        pool.submit(job)
    for _ in range(count):
        assert done.acquire(timeout=10)
    return threads


def test_short_calls_stay_on_one_thread() -> None:
    pool = WorkerPool(4, "test-pool")
    try:
        assert len(_run(pool, 200, 0)) == 1
    finally:
        pool.shutdown()


def test_long_calls_get_more_threads_which_retire_when_idle() -> None:
    pool = WorkerPool(3, "test-pool")
    try:
        assert len(_run(pool, 3, 0.3)) == 3
        deadline = time.monotonic() + IDLE_EXIT_S * 5
        while len(pool._workers) > 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(pool._workers) == 1
    finally:
        pool.shutdown()
