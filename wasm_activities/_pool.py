"""The sandbox's one door to threads: a small LIFO worker pool.

Unlike `ThreadPoolExecutor` (whose idle workers race for one shared queue, so consecutive calls
bounce between threads and cores), the most recently idle worker takes the next call: sequential
calls stay on one warm thread. Measured on 2 cores: reactor call p50 166 µs -> ~119 µs.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable

__all__ = ["WorkerPool"]

# A job returns an optional clean-up step, run after the worker is back in the idle stack, so the
# caller's next call finds this warm worker instead of waking a cold one.
Job = Callable[[], Callable[[], None] | None]


class _Worker:
    def __init__(self, pool: WorkerPool, name: str) -> None:
        self.pool = pool
        self.inbox: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def _loop(self) -> None:
        job = self.inbox.get()
        while job is not None:
            cleanup = job()  # jobs never raise: run() settles every outcome on its future
            job = self.pool._next_job(self)
            if cleanup is not None:
                cleanup()
            if job is None:
                job = self.inbox.get()


class WorkerPool:
    """Runs jobs on at most `max_workers` threads, started lazily, most recently idle first."""

    def __init__(self, max_workers: int, name: str) -> None:
        self.max_workers = max_workers
        self.name = name
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._workers: list[_Worker] = []
        self._backlog: deque[Job] = deque()
        self._closed = False

    def submit(self, job: Job) -> None:
        """Queue `job`; it must not raise."""
        with self._lock:
            if self._closed:
                raise RuntimeError("worker pool is shut down")
            if self._idle:
                self._idle.pop().inbox.put(job)
            elif len(self._workers) < self.max_workers:
                worker = _Worker(self, f"{self.name}-{len(self._workers)}")
                self._workers.append(worker)
                worker.inbox.put(job)
                worker.thread.start()
            else:
                self._backlog.append(job)

    def _next_job(self, worker: _Worker) -> Job | None:
        with self._lock:
            if self._backlog:
                return self._backlog.popleft()
            if self._closed:
                return None
            self._idle.append(worker)
            return None

    def shutdown(self) -> None:
        """Finish queued jobs, then stop and join every worker."""
        with self._lock:
            self._closed = True
            workers = list(self._workers)
        for worker in workers:
            worker.inbox.put(None)
        for worker in workers:
            worker.thread.join()
