"""The sandbox's worker pool: one warm thread for short calls, more only for long ones."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from wasm_activities._pool import IDLE_EXIT_S, WorkerPool, blocking


def _spin(seconds: float) -> None:
    """Use `seconds` of this thread's CPU (a long guest computation)."""
    start = time.thread_time()
    while time.thread_time() - start < seconds:
        pass


def _wait_on_io(seconds: float) -> None:
    with blocking():  # as the host's HTTP import does around the network round trip
        time.sleep(seconds)


def _run(pool: WorkerPool, count: int, work: Callable[[], None]) -> set[int]:
    threads: set[int] = set()
    done = threading.Semaphore(0)

    def job() -> None:
        work()
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
        assert len(_run(pool, 200, lambda: None)) == 1
    finally:
        pool.shutdown()


def test_calls_waiting_on_io_get_more_threads() -> None:
    pool = WorkerPool(3, "test-pool")
    try:
        assert len(_run(pool, 3, lambda: _wait_on_io(0.3))) == 3
    finally:
        pool.shutdown()


def test_unmarked_waits_do_not_grow_the_pool() -> None:
    # Wall time alone (here a plain sleep; in practice waiting for the GIL) is not a reason.
    pool = WorkerPool(3, "test-pool")
    try:
        assert len(_run(pool, 3, lambda: time.sleep(0.1))) == 1
    finally:
        pool.shutdown()


def test_cpu_heavy_calls_get_more_threads_which_retire_when_idle() -> None:
    pool = WorkerPool(2, "test-pool")
    try:
        assert len(_run(pool, 2, lambda: _spin(0.3))) == 2
        deadline = time.monotonic() + IDLE_EXIT_S * 5
        while len(pool._workers) > 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(pool._workers) == 1
    finally:
        pool.shutdown()
