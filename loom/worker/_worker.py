"""The worker: claims tasks under a lease, advances workflows, runs activities and timers.

Live workflows stay suspended in a bounded LRU cache so the common path never replays.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import os
import random
import signal
import socket
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any, Self

from opentelemetry import trace

from activity_registry import (
    ActivityNotFoundError,
    Registry,
    RegistryError,
    parse_spec,
)
from loom import telemetry
from loom._json import JSON, is_json
from loom._memory import give_back_if_worth_it, shrink_task_registry, shrunk
from loom.activation import ACTIVITY_TASK, TIMER_TASK
from loom.activity import Activity, RetryOptions
from loom.breaker import PROBE_GRACE_MS, BreakerCall, BreakerResult, CircuitBreaker
from loom.client import database_url, get_store
from loom.definition import WorkflowDefinition
from loom.exceptions import (
    CircuitOpenError,
    NonDeterministicWorkflowError,
    PayloadTooLargeError,
    UnknownWorkflowError,
)
from loom.history import (
    Event,
    EventKind,
    NewEvent,
    WorkflowStatus,
    encode_error,
)
from loom.limits import Limits, clip
from loom.llm import TOOLS_ACTIVITY
from loom.replay import WorkflowRun
from loom.scheduler import fire_due
from loom.store import (
    ClaimedTask,
    CommitResult,
    Completion,
    NewWorkflow,
    Store,
    WorkflowRecord,
    started_payload,
)
from loom.usage import check_prices
from loom.worker._activities import (
    _breaker_result,
    _describe_tools,
    _manifest_breaker,
    _register_natives,
    _resolve,
    _with_usage,
)
from loom.worker._heap import Collector
from loom.worker._outage import _backoff, _Outage
from loom.worker._runs import (
    _continues,
    _foreign_code,
    _poison,
    _step_progress,
    _stored_definition,
    _suspension_error,
)
from loom.worker._slots import Slots
from loom.worker._spans import _activity_span, _stamp_activities, _workflow_span
from loom.workflow import Workflow
from wasm_activities import SandboxError

logger = logging.getLogger("loom.worker")

DEFAULT_CONCURRENCY = 100
DEFAULT_LEASE_SECONDS = 30.0
DEFAULT_POLL_INTERVAL = 0.5
DEFAULT_CACHE_SIZE = 10_000
CLAIM_BATCH = 256
MAX_STARTING = 1024
"""At most this many eager starts (see `Worker.start`) hold a live run while their commit
is queued; more wait for a slot. Two of the SQLite writer's group commits (MAX_BATCH = 512)
keep it busy, while 100k starts at once no longer hold 100k runs together: that peak, freed
after the commits, left the heap fragmented (1.8 GB RSS for 10k cached runs)."""
DEPLOY_RETRY_DELAY_MS = (500, 60_000)
"""Backoff of a workflow task this worker's code cannot replay (another version started it)."""
ISOLATION_SECONDS = 10.0
"""At most this long a suspect waits for the tasks in flight, then runs with nothing beside."""
MAX_AVOIDED = 500
"""At most this many task keys excluded from one claim (the rest wait for the next)."""
GIVE_BACK_DELAY_MS = (500, 30_000)
"""Backoff before a task whose processing failed in the worker is claimable again."""
DEFAULT_SCHEDULE_INTERVAL = 1.0
"""Seconds between two looks at due schedules (a tick starts at most this late)."""
DEFAULT_MAX_RECOVERIES = 5
"""A task whose worker died this many times in a row running it suspends its workflow."""
DEFAULT_HANDBACKS = 4
"""Hand-backs (0.5 s, 1 s, 2 s, 4 s apart) of a task this worker cannot run (other code, an
unknown workflow or activity) before it suspends the workflow: long enough for a worker
that can to take it during a rolling deploy, short enough that a broken deploy shows."""

_CLOSING = {
    WorkflowStatus.COMPLETED: telemetry.WORKFLOW_COMPLETED,
    WorkflowStatus.FAILED: telemetry.WORKFLOW_FAILED,
}


class Worker:
    """Runs workflows and activities from the database.

    Use `async with Worker(...)` to run in the background of this process (tests,
    notebooks) or `await worker.run()` to run until SIGINT/SIGTERM or `stop()`.

    `limits` bounds what this worker lets into history: activity arguments and results,
    state, child input and error text (default `Limits.from_env()`; see `loom.Limits`).

    `overrides` maps an activity name to a native activity that serves every call of that
    name, at any version range, native or registered: the test doubles of `loom.testing`.
    """

    def __init__(
        self,
        workflows: Iterable[type[Workflow[Any, Any]] | WorkflowDefinition[Any, Any]] = (),
        activities: Iterable[Activity[..., Any]] = (),
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        database: str | None = None,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        max_cached_workflows: int = DEFAULT_CACHE_SIZE,
        worker_id: str | None = None,
        tune_gc: bool = True,
        limits: Limits | None = None,
        overrides: Mapping[str, Activity[..., Any]] | None = None,
        schedule_interval: float = DEFAULT_SCHEDULE_INTERVAL,
        max_recoveries: int = DEFAULT_MAX_RECOVERIES,
        handbacks: int = DEFAULT_HANDBACKS,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        if lease_seconds <= 0 or poll_interval <= 0 or schedule_interval <= 0:
            raise ValueError("lease_seconds, poll_interval and schedule_interval must be > 0")
        if max_recoveries < 1 or handbacks < 0:
            raise ValueError(
                f"max_recoveries must be >= 1 and handbacks >= 0, got {max_recoveries}, {handbacks}"
            )
        self.schedule_interval = schedule_interval
        self.max_recoveries = max_recoveries
        self.handbacks = handbacks
        self._workflows: dict[str, WorkflowDefinition[Any, Any]] = {}
        for wf in workflows:
            compiled = wf if isinstance(wf, WorkflowDefinition) else wf.compile()
            self._workflows[compiled.name] = compiled
        self._activities: dict[str, Activity[..., Any]] = {}
        for act in activities:
            if not isinstance(act, Activity):
                raise TypeError(f"activities must be @loom.activity functions, got {act!r}")
            self._activities[act.name] = act
        self._overrides = dict(overrides or {})
        self.database = database_url(database)
        self.concurrency = concurrency
        self.poll_interval = poll_interval
        self.lease_ms = int(lease_seconds * 1000)
        self.max_cached_workflows = max_cached_workflows
        self.limits = limits or Limits.from_env()
        check_prices()
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._cache: OrderedDict[str, WorkflowRun] = OrderedDict()
        self._advancing: dict[str, WorkflowRun] = {}
        """Runs out of the cache while their workflow task commits (see _cursor_of)."""
        self._inflight: set[asyncio.Task[None]] = set()
        self._store: Store | None = None
        self._wake: asyncio.Event | None = None
        self._full = False
        """The claim loop found no capacity: a task that ends must wake it (see _reap)."""
        self._start_slots: Slots | None = None
        """Bounds the eager starts in progress (see MAX_STARTING); made on the worker's loop."""
        self._stopping = False
        self._main: asyncio.Task[None] | None = None
        self._started: asyncio.Event | None = None
        self._activity_registry: Registry | None = None
        self._collector = Collector(tune_gc)
        self._failed_claims: list[tuple[ClaimedTask, str, int]] = []
        self._last_traceback = -math.inf
        # workflow_id -> (its code, our hand-backs, why): see _leave_for_its_code
        self._diverged: dict[str, tuple[str, int, NonDeterministicWorkflowError]] = {}
        self._handed_back: dict[str, int] = {}  # task key -> our hand-backs (unknown names)
        self._avoid: dict[str, float] = {}  # task key -> monotonic time to claim it again
        # A suspect (a task whose last worker died running it) runs alone: see _isolate.
        self._suspect: ClaimedTask | None = None
        self._isolated: asyncio.Task[None] | None = None
        self._suspect_since = self._isolated_since = 0.0
        self._deferred: list[str] = []
        self._tools_activity = Activity(
            fn=self._tool_definitions,
            name=TOOLS_ACTIVITY,
            retry=RetryOptions(max_attempts=3),
            timeout=60.0,
            description="tool definitions of registered activities, for ctx.llm",
        )

    # -- lifecycle --------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._started = asyncio.Event()
        self._main = asyncio.create_task(self._serve(), name=f"loom-worker:{self.worker_id}")
        started = asyncio.ensure_future(self._started.wait())
        done, _ = await asyncio.wait([started, self._main], return_when=asyncio.FIRST_COMPLETED)
        if self._main in done:
            started.cancel()
            self._main.result()  # re-raises the start-up error
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def run(self) -> None:
        """Serve until SIGINT/SIGTERM or `stop()`; in-flight tasks finish first."""
        loop = asyncio.get_running_loop()
        installed = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, self._request_stop)
                installed.append(sig)
        if installed and hasattr(signal, "pthread_sigmask"):
            # `loom worker` holds these back while the loop starts; one that arrived
            # meanwhile is delivered now, to the handler just installed.
            signal.pthread_sigmask(signal.SIG_UNBLOCK, installed)
        try:
            self._main = asyncio.current_task()
            await self._serve()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)

    def _request_stop(self) -> None:
        self._stopping = True
        if self._wake is not None:
            self._wake.set()

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop claiming, let in-flight tasks finish (up to `timeout`), release leases."""
        self._request_stop()
        main = self._main
        if main is not None and main is not asyncio.current_task():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(main), timeout + 5)

    # -- main loop --------------------------------------------------------------------

    async def _serve(self) -> None:
        store = self._store = get_store(self.database)
        await store.reserve(self.concurrency)
        self._wake = asyncio.Event()
        self._start_slots = Slots(MAX_STARTING)
        self._collector.raise_threshold()
        await self._registry()  # native activities become visible in `loom activity list`
        unsubscribe = store.wakeups.on_tasks(self._wake.set)
        no_starts = store.wakeups.on_start(self)
        heartbeat = asyncio.create_task(self._heartbeat(store))
        schedules = asyncio.create_task(self._schedule_loop(store))
        if self._started is not None:
            self._started.set()
        try:
            await self._claim_loop(store)
        finally:
            unsubscribe()
            no_starts()
            schedules.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await schedules
            await self._drain()
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            await store.release_tasks(self.worker_id)
            for run in self._cache.values():
                run.close()
            self._cache.clear()
            if self._activity_registry is not None:
                await self._activity_registry.close()
                self._activity_registry = None
            self._collector.restore()

    # -- starts in this process -----------------------------------------------------------

    def serves(self, workflow_name: str) -> bool:
        """Whether a start of `workflow_name` in this process may run here at once."""
        return (
            not self._stopping
            and workflow_name in self._workflows
            and self._suspect is None
            and len(self._inflight) < self.concurrency
        )

    async def start(self, store: Store, spec: NewWorkflow) -> tuple[WorkflowRecord, bool]:
        """Start `spec` with its first activation already run (an eager start): the store
        creates the workflow and commits that activation in one transaction, so a lone
        workflow pays one commit for its start where a create, a claim and a commit paid
        three, and its first activities are leased to this worker at once."""
        assert self._start_slots is not None  # registered as a starter only while serving
        async with self._start_slots:
            if self._stopping:  # stopped while this start waited for a slot: a plain create
                return await store.create_workflow(spec)
            return await self._start_eagerly(store, spec)

    async def _start_eagerly(self, store: Store, spec: NewWorkflow) -> tuple[WorkflowRecord, bool]:
        compiled = self._workflows[spec.workflow_name]
        now = store.now_ms()
        run = WorkflowRun(compiled, spec.workflow_id, limits=self.limits)
        started = Event(1, EventKind.WORKFLOW_STARTED, started_payload(spec), now)
        with _workflow_span(run, spec.trace, is_replay=False):
            run.apply([started])
            activation = run.take_activation()
            _stamp_activities(store, run, activation)
            record, created, result = await store.create_and_commit(
                spec,
                self.worker_id,
                self.lease_ms,
                activation,
                run.cursor,
                _step_progress(compiled, activation.step_index),
                now=now,
                eager_lease_ms=self._eager_lease_ms(),
            )
        if result is None:
            run.close()  # it existed already: an idempotent start, nothing started
        else:
            telemetry.WORKFLOW_STARTED.add(1, {"workflow": compiled.name})
            self._committed(store, run, activation.status, result)
        return record, created

    async def _claim_loop(self, store: Store) -> None:
        assert self._wake is not None
        outage = _Outage("claiming tasks")
        while not self._stopping:
            self._wake.clear()
            free = self.concurrency - len(self._inflight)
            if self._suspect is not None or self._isolated is not None:
                free = self._isolate()
            self._full = free <= 0
            claimed: list[ClaimedTask] = []
            if free > 0:
                limit = min(free, CLAIM_BATCH)
                try:
                    claimed = await store.claim_tasks(
                        self.worker_id, limit, self.lease_ms, self._cursor_of, avoid=self._avoided()
                    )
                except Exception as err:
                    # The store is failing (disk full, database unreachable): back off and
                    # keep trying; leases we cannot renew expire and nothing is lost.
                    await self._pause(outage.failed(err))
                    continue
                outage.recovered()
                claimed = await self._set_suspects_apart(store, claimed)
                for task in claimed:
                    self._spawn(self._process(store, task))
                if len(claimed) == limit:
                    continue
            if self._stopping:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)

    async def _set_suspects_apart(
        self, store: Store, claimed: list[ClaimedTask]
    ) -> list[ClaimedTask]:
        """Keep one suspect to run alone and give the other suspects back (their crash
        count kept, not counted again if this worker dies): a worker killed by one task
        must not count as a death against the innocent tasks that ran beside it."""
        ordinary = []
        given_back = []
        for task in sorted(claimed, key=lambda t: t.recoveries):
            if not task.recoveries or task.recoveries >= self.max_recoveries:
                ordinary.append(task)  # poison is suspended at once, without running it
            elif self._suspect is None and self._isolated is None:
                self._suspect = task
                self._suspect_since = time.monotonic()
            else:
                given_back.append(task)
        if given_back:
            for task in given_back:
                self._avoid[task.task_key] = math.inf  # until the suspect is done
                self._deferred.append(task.task_key)
            await store.release_claims(given_back)
        return ordinary

    def _isolate(self) -> int:
        """Claim capacity while a suspect waits for the tasks in flight, then runs: none.

        Both waits are bounded by ISOLATION_SECONDS: a killer strikes soon after it starts,
        and a long innocent task (a slow LLM call caught in a crash) must not stall this
        worker for its whole duration."""
        now = time.monotonic()
        if self._isolated is not None:
            if self._isolated.done():
                self._isolated = None
                for key in self._deferred:
                    self._avoid.pop(key, None)
                self._deferred.clear()
            elif now - self._isolated_since < ISOLATION_SECONDS:
                return 0
            return self.concurrency - len(self._inflight)
        if self._suspect is None:
            return self.concurrency - len(self._inflight)
        if self._inflight and now - self._suspect_since < ISOLATION_SECONDS:
            return 0
        assert self._store is not None
        suspect, self._suspect = self._suspect, None
        self._isolated = asyncio.create_task(self._process(self._store, suspect))
        self._isolated_since = now
        self._inflight.add(self._isolated)
        self._isolated.add_done_callback(self._reap)
        return 0

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake at once for `stop()`."""
        assert self._wake is not None
        self._wake.clear()
        if not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), seconds)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._inflight.add(task)
        task.add_done_callback(self._reap)

    def _reap(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        # Only a claim loop that stopped for want of capacity waits for a task to end; waking
        # it after every step of every workflow cost a claim that found nothing (a write
        # statement and two thread hops) per step.
        if self._full and self._wake is not None:
            self._wake.set()
        if not task.cancelled() and task.exception() is not None:
            logger.error("worker task crashed", exc_info=task.exception())

    async def _drain(self, timeout: float = 10.0) -> None:
        if self._inflight:
            _, pending = await asyncio.wait(list(self._inflight), timeout=timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1)

    async def _heartbeat(self, store: Store) -> None:
        outage = _Outage("renewing leases")
        while True:
            await asyncio.sleep(self.lease_ms / 3000)
            try:
                await self._give_back_failed(store)
                await store.extend_leases(self.worker_id, self.lease_ms)
                if telemetry.is_enabled():
                    telemetry.note_backlog(await store.count_tasks())
            except Exception as err:
                outage.failed(err)
            else:
                outage.recovered()
            # After the leases: a trim waits for the executor and must never delay a renewal.
            await self._give_back_memory()

    async def _schedule_loop(self, store: Store) -> None:
        """Fire the due schedules of the workflows this worker serves (see loom.scheduler)."""
        outage = _Outage("firing schedules")
        while True:
            try:
                started = await fire_due(store, self._workflows)
            except Exception as err:
                await asyncio.sleep(outage.failed(err))
                continue
            outage.recovered()
            if started:
                shown = ", ".join(started[:5]) + (" …" if len(started) > 5 else "")
                logger.info("schedules started %d workflow(s): %s", len(started), shown)
            await asyncio.sleep(self.schedule_interval)

    async def _give_back_memory(self) -> None:
        """Once a burst drained, return the freed heap to the OS (see `loom._memory`)."""
        self._collector.shrank(len(self._cache))
        # Tables sized for a burst's runs and tasks, mostly empty now: copied to fit, or
        # their megabytes could never be given back. A copy only when oversized (cheap).
        self._cache = shrunk(self._cache)
        self._advancing = shrunk(self._advancing)
        self._inflight = shrunk(self._inflight)
        shrink_task_registry()
        await asyncio.get_running_loop().run_in_executor(None, give_back_if_worth_it)

    async def _give_back(self, store: Store, task: ClaimedTask, err: Exception) -> None:
        """Release a task whose processing failed here, due again after a backoff.

        Without this the heartbeat would renew its lease for as long as this worker lives
        and the workflow would never move again. If the store refuses (it is what failed),
        the heartbeat retries the release before it renews anything.
        """
        delay = int(_backoff(GIVE_BACK_DELAY_MS, task.attempt))
        note = (
            f"worker {self.worker_id} could not process task {task.task_key} "
            f"(attempt {task.attempt}): {type(err).__name__}: {self._clip(err)}; "
            f"retrying in {delay / 1000:.1f}s"
        )
        try:
            await store.retry_activity(task, store.now_ms() + delay, task.payload, note)
        except Exception:
            self._failed_claims.append((task, note, delay))

    async def _give_back_failed(self, store: Store) -> None:
        while self._failed_claims:
            task, note, delay = self._failed_claims[0]
            await store.retry_activity(task, store.now_ms() + delay, task.payload, note)
            self._failed_claims.pop(0)

    def _cursor_of(self, workflow_id: str) -> tuple[int, int] | None:
        # Called on the store's thread: plain dict lookups, no mutation. A run out of the
        # cache while its task commits counts: the claim then loads only what follows it
        # (a busy actor's next message arrives exactly then; its history can be long).
        run = self._cache.get(workflow_id) or self._advancing.get(workflow_id)
        return None if run is None else (run.cursor, run.epoch)

    async def _process(self, store: Store, task: ClaimedTask) -> None:
        try:
            if task.recoveries >= self.max_recoveries:
                await self._suspend(store, task, _poison(task))
            elif task.kind == ACTIVITY_TASK:
                await self._run_activity(store, task)
            elif task.kind == TIMER_TASK:
                done = await store.fire_timer(
                    task, continue_with=self._cursor_of, lease_ms=self.lease_ms
                )
                await self._continue(store, done)
            else:
                await self._advance(store, task)
        except Exception as err:
            # One traceback a minute: when the store is what fails, every task fails alike.
            traced = time.monotonic() - self._last_traceback > 60
            if traced:
                self._last_traceback = time.monotonic()
            logger.warning(
                "task %s of workflow %s failed in the worker (%s: %s); it is given back "
                "to be retried",
                task.task_key,
                task.workflow_id,
                type(err).__name__,
                err,
                exc_info=traced,
            )
            await self._give_back(store, task, err)

    # -- workflows --------------------------------------------------------------------

    async def _advance(self, store: Store, task: ClaimedTask) -> None:
        record = task.workflow
        assert record is not None and task.events is not None
        compiled = self._workflows.get(record.workflow_name) or await _stored_definition(
            store, record.workflow_name, record.source_hash
        )
        if compiled is None:
            unknown = UnknownWorkflowError(task.workflow_id, record.workflow_name, self.worker_id)
            await self._hand_back(store, task, unknown)
            return
        known = self._diverged.get(task.workflow_id)
        if known is not None and known[0] == record.source_hash:
            # Nothing ran it since our replay diverged: the answer is the same, skip replaying.
            await self._leave_for_its_code(store, task, known[0], compiled, known[2])
            return
        run = self._cache.pop(task.workflow_id, None)
        if run is not None:
            self._advancing[task.workflow_id] = run  # see _cursor_of
        try:
            events = task.events
            is_current = run is not None and _continues(run, task, record.epoch)
            if run is not None and is_current:
                parent = run.trace
                events = [event for event in task.events if event.sequence > run.cursor]
            else:
                # The claim saw a cached run that has since left the cache or moved on (the
                # completion fast path, a re-claim of our own expired lease, eviction): its
                # partial history cannot rebuild the workflow, so replay all of it.
                if run is not None:
                    run.close()
                if not task.is_full_history:
                    events = await store.list_events(task.workflow_id)
                run = WorkflowRun(
                    compiled,
                    task.workflow_id,
                    replay_until=record.processed_sequence,
                    limits=self.limits,
                )
                parent = (
                    events[0].payload.get("trace") if events and events[0].sequence == 1 else None
                )
            if record.processed_sequence == 0:
                telemetry.WORKFLOW_STARTED.add(1, {"workflow": compiled.name})
            with _workflow_span(
                run, parent, is_replay=not is_current and record.processed_sequence > 0
            ):
                run.apply(events, include_commands=not is_current)
                failure = run.failure
                if isinstance(failure, NonDeterministicWorkflowError):
                    # Replay diverged: a deploy (or rollback) can fix it, so it must not fail.
                    run.close()
                    code = _foreign_code(run, compiled, record.source_hash)
                    if code is not None:
                        await self._leave_for_its_code(store, task, code, compiled, failure)
                    else:
                        await self._suspend(store, task, failure)
                    return
                self._diverged.pop(task.workflow_id, None)
                activation = run.take_activation()
                _stamp_activities(store, run, activation)
                self._advancing[task.workflow_id] = run
                result = await store.commit_workflow_task(
                    task,
                    activation,
                    run.cursor,
                    _step_progress(compiled, activation.step_index),
                    eager_lease_ms=self._eager_lease_ms(),
                )
                self._committed(store, run, activation.status, result)
        finally:
            self._advancing.pop(task.workflow_id, None)  # back in the cache, or gone

    async def _leave_for_its_code(
        self,
        store: Store,
        task: ClaimedTask,
        code: str,
        compiled: WorkflowDefinition[Any, Any],
        divergence: NonDeterministicWorkflowError,
    ) -> None:
        """A rolling deploy: this worker's code cannot replay a workflow that other code
        ran. Failing it would make the deploy fatal to every in-flight workflow; instead
        the task goes back for a worker still running that code, and the workflow stays
        RUNNING until one takes it or the change is rolled back. The delay grows with this
        worker's own hand-backs of it (not the task's attempts, which count every worker's
        claims), so a right worker beside it still gets the task within seconds."""
        known = self._diverged.get(task.workflow_id)
        count = 1 if known is None else known[1] + 1
        self._diverged.pop(task.workflow_id, None)
        if count > self.handbacks:
            # No worker running that code took it meanwhile: a deploy left it behind.
            await self._suspend(store, task, divergence)
            return
        self._diverged[task.workflow_id] = (code, count, divergence)
        if len(self._diverged) > max(self.max_cached_workflows, 1000):  # bounded memory
            del self._diverged[next(iter(self._diverged))]
        delay = _backoff(DEPLOY_RETRY_DELAY_MS, count) * random.uniform(0.8, 1.2)
        note = (
            f"workflow {task.workflow_id} was run by code with source_hash {code}; "
            f"worker {self.worker_id} runs {compiled.source_hash} and its replay diverges "
            f"({self._clip(divergence)}); left for a worker running {code} "
            f"(this worker retries in {delay / 1000:.1f}s). Deploy changed code after "
            "`loom replay` passes, or roll back."
        )
        if count == 1:
            logger.warning("%s", note)
        # Due at once for every other worker; this one leaves it alone for `delay`, so a
        # worker that can run it gets it at its next claim, not after a backoff.
        self._avoid[task.task_key] = time.monotonic() + delay / 1000
        await store.retry_activity(task, store.now_ms(), task.payload, note)
        store.wakeups.tasks_ready()

    def _avoided(self) -> tuple[str, ...]:
        """Task keys this worker must not claim now (see _leave_for_its_code)."""
        if not self._avoid:
            return ()
        now = time.monotonic()
        for key in [key for key, until in self._avoid.items() if until <= now]:
            del self._avoid[key]
        return tuple(itertools.islice(self._avoid, MAX_AVOIDED))

    async def _hand_back(self, store: Store, task: ClaimedTask, err: Exception) -> None:
        """A task naming a workflow or activity this worker lacks: due at once for other
        workers, avoided here for a backoff; after `handbacks` of ours, suspended."""
        count = self._handed_back.pop(task.task_key, 0) + 1
        if count > self.handbacks:
            await self._suspend(store, task, err)
            return
        self._handed_back[task.task_key] = count
        while len(self._handed_back) > max(self.max_cached_workflows, 1000):  # bounded memory
            del self._handed_back[next(iter(self._handed_back))]
        delay = _backoff(DEPLOY_RETRY_DELAY_MS, count) * random.uniform(0.8, 1.2)
        note = f"{self._clip(err)} (hand-back {count} of {self.handbacks}, to other workers)"
        if count == 1:
            logger.warning("%s", note)
        self._avoid[task.task_key] = time.monotonic() + delay / 1000
        await store.retry_activity(task, store.now_ms(), task.payload, note)
        store.wakeups.tasks_ready()

    async def _suspend(self, store: Store, task: ClaimedTask, err: Exception) -> None:
        """Park the workflow with `err` kept; `task` stays for `loom resume`."""
        error = _suspension_error(err, task, self.worker_id, self.limits.max_error_chars)
        self._diverged.pop(task.workflow_id, None)
        self._handed_back.pop(task.task_key, None)
        self._avoid.pop(task.task_key, None)
        run = self._cache.pop(task.workflow_id, None)
        if run is not None:
            run.close()
        if await store.suspend_workflow(task.workflow_id, error, task):
            logger.warning(
                "workflow %s SUSPENDED: %s: %s",
                task.workflow_id,
                type(err).__name__,
                self._clip(err),
            )

    def _eager_lease_ms(self) -> int:
        has_room = len(self._inflight) < self.concurrency
        return self.lease_ms if has_room and not self._stopping else 0

    def _committed(
        self, store: Store, run: WorkflowRun, status: WorkflowStatus, result: CommitResult
    ) -> None:
        """Keep a run that committed and is still open; start the tasks it leased to us."""
        if result.is_committed and status in _CLOSING:
            labels = {"workflow": run.compiled.name}
            _CLOSING[status].add(1, labels)
            seconds = max(store.now_ms() - run.started_at_ms, 0) / 1000
            telemetry.WORKFLOW_DURATION.record(seconds, labels)
        if not result.is_committed or status is not WorkflowStatus.RUNNING or run.is_finished:
            run.close()  # closed, or continued as new (its next epoch replays from scratch)
        else:
            run.epoch = result.epoch
            if not result.needs_rerun:
                run.cursor = result.last_sequence  # everything up to here is ours or seen
            displaced = self._cache.pop(run.workflow_id, None)
            if displaced is not None and displaced is not run:
                displaced.close()
            self._cache[run.workflow_id] = run
            self._collector.grew(len(self._cache))
            if len(self._cache) > self.max_cached_workflows:
                _, evicted = self._cache.popitem(last=False)
                evicted.close()
        for eager in result.tasks:
            self._spawn(self._process(store, eager))

    async def _continue(self, store: Store, done: Completion) -> None:
        """Advance the workflow at once when completing its task handed us its lease."""
        if done.next_task is not None:
            await self._advance(store, done.next_task)

    async def _complete(
        self,
        store: Store,
        task: ClaimedTask,
        kind: EventKind,
        payload: dict[str, JSON],
        breaker: BreakerResult | None = None,
    ) -> None:
        run = self._cache.get(task.workflow_id)
        if run is not None and run.pending_count == 1 and not self._stopping:
            # Sole outstanding command: drive the live run with the result now and record
            # both in one transaction; the store refuses if anything else happened meanwhile.
            del self._cache[task.workflow_id]
            at = store.now_ms()
            expected = (run.cursor, run.epoch)
            with _workflow_span(run, run.trace, is_replay=False):
                run.apply([Event(run.cursor + 1, kind, payload, at)], include_commands=False)
                activation = run.take_activation()
                _stamp_activities(store, run, activation)
                result = await store.complete_and_continue(
                    task,
                    NewEvent(kind, payload),
                    expected,
                    activation,
                    _step_progress(run.compiled, activation.step_index),
                    at=at,
                    eager_lease_ms=self._eager_lease_ms(),
                    breaker=breaker,
                )
                self._committed(store, run, activation.status, result)
            return
        done = await store.complete_activity(
            task,
            kind,
            payload,
            continue_with=self._cursor_of,
            lease_ms=self.lease_ms,
            breaker=breaker,
        )
        await self._continue(store, done)

    # -- activities -------------------------------------------------------------------

    async def _run_activity(self, store: Store, task: ClaimedTask) -> None:
        payload = task.payload
        name = str(payload["name"])
        scheduled_at = payload.get("scheduled_at")
        if task.attempt == 1 and isinstance(scheduled_at, int):
            waited = max(store.now_ms() - scheduled_at, 0) / 1000
            telemetry.ACTIVITY_SCHEDULE_TO_START.record(waited, {"activity": name})
        began = time.perf_counter()
        with _activity_span(task, name):
            outcome = await self._attempt_activity(store, task)
        labels = {"activity": name, "outcome": outcome}
        telemetry.ACTIVITY_DURATION.record(time.perf_counter() - began, labels)

    async def _attempt_activity(self, store: Store, task: ClaimedTask) -> str:
        """One attempt; returns its outcome: completed, failed (for good), retried, or
        deferred (an open circuit breaker: not run)."""
        payload = task.payload
        name = str(payload["name"])
        if name == TOOLS_ACTIVITY:
            activity: Activity[..., Any] | None = self._tools_activity
        else:
            activity = self._activities.get(name) if not self._overrides else self._override(name)
        if activity is None:
            return await self._run_registered(store, task)
        policy = activity.circuit_breaker
        if policy is not None:
            timeout_ms = int(activity.timeout * 1000)
            own = timeout_ms if activity.has_own_timeout else None
            if not await self._admitted(store, task, name, policy, timeout_ms, own):
                return "deferred"
        try:
            result = await activity.attempt(payload["input"])
            if not is_json(result):
                raise TypeError(
                    f"activity {name!r} returned {type(result).__name__}, which is not JSON; "
                    f"annotate its return type or return JSON values"
                )
            self._check_result(name, result)
        except Exception as err:
            failed = _breaker_result(name, policy, is_success=False)
            retryable = activity.is_retryable(err) and not isinstance(
                err, TypeError | PayloadTooLargeError
            )
            if retryable and task.attempt < activity.retry.max_attempts:
                delay = activity.retry.delay(task.attempt) * random.uniform(0.8, 1.2)
                await store.retry_activity(
                    task,
                    store.now_ms() + int(delay * 1000),
                    payload,
                    f"activity {name!r} attempt {task.attempt} failed: "
                    f"{type(err).__name__}: {self._clip(err)}; retrying in {delay:.2f}s",
                    breaker=failed,
                )
                telemetry.note_error(err)
                return "retried"
            await self._fail_activity(store, task, err, retryable=retryable, breaker=failed)
            return "failed"
        completed = {"seq": payload["seq"], "name": name, "result": result, "attempt": task.attempt}
        await self._complete(
            store,
            task,
            EventKind.ACTIVITY_COMPLETED,
            _with_usage(completed),
            _breaker_result(name, policy, is_success=True),
        )
        return "completed"

    async def _admitted(
        self,
        store: Store,
        task: ClaimedTask,
        name: str,
        policy: CircuitBreaker,
        timeout_ms: int,
        own_timeout_ms: int | None,
    ) -> bool:
        """Whether the attempt runs now; a deferred one was handed back by the store, one
        deferred past the call's own timeout fails here with CircuitOpenError."""
        call = BreakerCall(name, policy, timeout_ms + PROBE_GRACE_MS, own_timeout_ms)
        admission = await store.admit_attempt(task, call)
        if admission.is_expired:
            err = CircuitOpenError(name, admission.waited_ms)
            await self._fail_activity(store, task, err, retryable=False)
        elif not admission.is_admitted and admission.is_held:
            logger.debug(
                "activity %s: circuit breaker %s, attempt of %s deferred until %s",
                name,
                admission.state,
                task.task_key,
                admission.retry_at,
            )
        return admission.is_admitted

    async def _tool_definitions(self, specs: list[str]) -> list[dict[str, JSON]]:
        """The TOOLS_ACTIVITY: each spec's tool definition (name, description, input schema)
        as the registry resolves it now; a spec only a test double serves takes any object."""
        return await _describe_tools(await self._registry(), self._overrides, specs)

    def _override(self, spec: str) -> Activity[..., Any] | None:
        name, _ = parse_spec(spec)  # the spec was validated when the workflow issued it
        return self._overrides.get(name) or self._activities.get(spec)

    async def _fail_activity(
        self,
        store: Store,
        task: ClaimedTask,
        err: BaseException,
        *,
        retryable: bool,
        extra: dict[str, JSON] | None = None,
        breaker: BreakerResult | None = None,
    ) -> None:
        error_type = str(getattr(err, "error_type", type(err).__name__))
        telemetry.note_error(err)
        error = encode_error(
            err,
            max_chars=self.limits.max_error_chars,
            error_type=error_type,
            retryable=retryable,
        )
        details: dict[str, JSON] = error["details"]
        details["activity_name"] = task.payload["name"]
        await self._complete(
            store,
            task,
            EventKind.ACTIVITY_FAILED,
            {
                "seq": task.payload["seq"],
                "name": task.payload["name"],
                "error": error,
                "attempt": task.attempt,
                **(extra or {}),
            },
            breaker,
        )

    def _check_result(self, name: str, result: JSON) -> None:
        """A result over `max_result_bytes` is an error of the attempt, not a value: it fails
        the activity for good (a rerun returns the same size) and never reaches history."""
        self.limits.check(f"result of activity {name!r}", result, "max_result_bytes")

    def _clip(self, err: BaseException) -> str:
        """An attempt's error text for the retry log line, cut to `max_error_chars`."""
        return clip(str(err), self.limits.max_error_chars)

    # -- registered (WebAssembly) activities --------------------------------------------

    async def _registry(self) -> Registry:
        if self._activity_registry is None:
            self._activity_registry = Registry(self.database)
            await _register_natives(self._activity_registry, self._activities.values())
        return self._activity_registry

    async def _run_registered(self, store: Store, task: ClaimedTask) -> str:
        payload = task.payload
        registry = await self._registry()
        try:
            activity = await _resolve(store, registry, task)
        except ActivityNotFoundError as err:
            # Another worker may serve it, or an operator may register it: not a failure.
            await self._hand_back(store, task, err)
            return "deferred"
        except (RegistryError, ValueError) as err:
            await self._fail_activity(store, task, err, retryable=False)
            return "failed"
        trace.get_current_span().set_attribute("loom.activity.version", activity.version)
        pin: dict[str, JSON] = {"version": activity.version, "sha256": activity.sha256}
        secrets = {s: os.environ[s] for s in activity.grants.secrets if s in os.environ}
        policy = _manifest_breaker(activity)
        if policy is not None:
            timeout_ms = activity.limits.timeout_ms
            if not await self._admitted(store, task, activity.name, policy, timeout_ms, None):
                return "deferred"
        failed = _breaker_result(activity.name, policy, is_success=False)
        try:
            result = await registry.run(activity, payload["input"], secrets=secrets)
            self._check_result(activity.ref, result.output)
        except PayloadTooLargeError as err:
            await self._fail_activity(
                store, task, err, retryable=False, extra={"pin": pin}, breaker=failed
            )
            return "failed"
        except (SandboxError, RegistryError) as err:
            retryable = bool(getattr(err, "retryable", False))
            retry = activity.retry
            if retryable and task.attempt < retry.max_attempts:
                delay_ms = min(
                    retry.initial_interval_ms * retry.backoff ** (task.attempt - 1),
                    retry.max_interval_ms,
                ) * random.uniform(0.8, 1.2)
                await store.retry_activity(
                    task,
                    store.now_ms() + int(delay_ms),
                    {**payload, "pin": pin},
                    f"activity {activity.ref} attempt {task.attempt} failed: "
                    f"{type(err).__name__}: {self._clip(err)}; retrying in {delay_ms / 1000:.2f}s",
                    breaker=failed,
                )
                telemetry.note_error(err)
                return "retried"
            await self._fail_activity(
                store, task, err, retryable=retryable, extra={"pin": pin}, breaker=failed
            )
            return "failed"
        if result.usage.fuel_used:
            telemetry.WASM_FUEL_USED.add(result.usage.fuel_used, {"activity": activity.name})
        completed = {
            "seq": payload["seq"],
            "name": payload["name"],
            "result": result.output,
            "attempt": task.attempt,
            "pin": pin,
            "usage": result.usage.model_dump(),
        }
        await self._complete(
            store,
            task,
            EventKind.ACTIVITY_COMPLETED,
            _with_usage(completed),
            _breaker_result(activity.name, policy, is_success=True),
        )
        return "completed"
