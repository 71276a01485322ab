"""The worker: claims tasks under a lease, advances workflows, runs activities and timers.

Live workflows stay suspended in a bounded LRU cache so the common path never replays.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
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

from activity_registry import (
    ActivityNotFoundError,
    ActivityVersion,
    CorruptModuleError,
    Registry,
    RegistryError,
    RetryPolicy,
    parse_spec,
)
from loom._json import JSON, is_json
from loom.activation import ACTIVITY_TASK, TIMER_TASK
from loom.activity import Activity
from loom.client import database_url, get_store
from loom.clock import wall_ms
from loom.definition import WorkflowDefinition
from loom.exceptions import NonDeterministicWorkflowError, PayloadTooLargeError
from loom.history import (
    COMMAND_KINDS,
    Event,
    EventKind,
    NewEvent,
    WorkflowStatus,
    encode_error,
)
from loom.limits import Limits, clip
from loom.replay import WorkflowRun
from loom.store import ClaimedTask, CommitResult, Completion, StepProgress, Store
from loom.workflow import Workflow
from wasm_activities import SandboxError

logger = logging.getLogger("loom.worker")

DEFAULT_CONCURRENCY = 100
DEFAULT_LEASE_SECONDS = 30.0
DEFAULT_POLL_INTERVAL = 0.5
DEFAULT_CACHE_SIZE = 10_000
GC_GEN0_THRESHOLD = 50_000
"""The engine allocates many short-lived objects per workflow (futures, events, handles);
with CPython's default gen-0 threshold of 700 the collector runs every few workflows and
scans every live run, which costs ~30% of throughput at 5k in-flight workflows."""
CLAIM_BATCH = 256
UNKNOWN_WORKFLOW_DELAY_MS = 5_000
STORE_BACKOFF_SECONDS = (0.1, 5.0)
"""First and longest pause of the claim loop while the store fails (a full disk, a database
restart): the worker waits it out and resumes instead of exiting."""
DEPLOY_RETRY_DELAY_MS = (500, 60_000)
"""Backoff of a workflow task this worker's code cannot replay (another version started it)."""
MAX_AVOIDED = 500
"""At most this many task keys excluded from one claim (the rest wait for the next)."""
GIVE_BACK_DELAY_MS = (500, 30_000)
"""Backoff before a task whose processing failed in the worker is claimable again."""


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
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        if lease_seconds <= 0 or poll_interval <= 0:
            raise ValueError("lease_seconds and poll_interval must be > 0")
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
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._cache: OrderedDict[str, WorkflowRun] = OrderedDict()
        self._advancing: dict[str, WorkflowRun] = {}
        """Runs out of the cache while their workflow task commits (see _cursor_of)."""
        self._inflight: set[asyncio.Task[None]] = set()
        self._store: Store | None = None
        self._wake: asyncio.Event | None = None
        self._stopping = False
        self._main: asyncio.Task[None] | None = None
        self._started: asyncio.Event | None = None
        self._activity_registry: Registry | None = None
        self.tune_gc = tune_gc
        self._gc_threshold: tuple[int, int, int] | None = None
        self._failed_claims: list[tuple[ClaimedTask, str, int]] = []
        self._last_traceback = -math.inf
        # workflow_id -> (its code, our hand-backs, why): see _leave_for_its_code
        self._diverged: dict[str, tuple[str, int, str]] = {}
        self._definitions: dict[tuple[str, str], WorkflowDefinition[Any, Any]] = {}
        self._avoid: dict[str, float] = {}  # task key -> monotonic time to claim it again

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
        self._raise_gc_threshold()
        await self._registry()  # native activities become visible in `loom activity list`
        unsubscribe = store.wakeups.on_tasks(self._wake.set)
        heartbeat = asyncio.create_task(self._heartbeat(store))
        if self._started is not None:
            self._started.set()
        try:
            await self._claim_loop(store)
        finally:
            unsubscribe()
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
            if self._gc_threshold is not None:
                gc.set_threshold(*self._gc_threshold)
                self._gc_threshold = None

    def _raise_gc_threshold(self) -> None:
        """See GC_GEN0_THRESHOLD; restored when the worker stops. `tune_gc=False` opts out."""
        current = gc.get_threshold()
        if self.tune_gc and current[0] < GC_GEN0_THRESHOLD:
            self._gc_threshold = (current[0], current[1], current[2])
            gc.set_threshold(GC_GEN0_THRESHOLD, current[1], current[2])

    async def _claim_loop(self, store: Store) -> None:
        assert self._wake is not None
        outage = _Outage("claiming tasks")
        while not self._stopping:
            self._wake.clear()
            free = self.concurrency - len(self._inflight)
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
                for task in claimed:
                    self._spawn(self._process(store, task))
                if len(claimed) == limit:
                    continue
            if self._stopping:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)

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
        if self._wake is not None:
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
            except Exception as err:
                outage.failed(err)
            else:
                outage.recovered()

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
            if task.kind == ACTIVITY_TASK:
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
        compiled = self._workflows.get(record.workflow_name) or await self._stored_definition(
            store, record.workflow_name, record.source_hash
        )
        if compiled is None:
            logger.warning(
                "workflow %s is a %r, which this worker does not know; leaving it for others",
                task.workflow_id,
                record.workflow_name,
            )
            await store.retry_activity(
                task,
                store.now_ms() + UNKNOWN_WORKFLOW_DELAY_MS,
                task.payload,
                f"worker {self.worker_id} does not know workflow {record.workflow_name!r}",
            )
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
            if run is not None and _continues(run, task, record.epoch):
                run.apply(
                    [event for event in task.events if event.sequence > run.cursor],
                    include_commands=False,
                )
            else:
                # The claim saw a cached run that has since left the cache or moved on (the
                # completion fast path, a re-claim of our own expired lease, eviction): its
                # partial history cannot rebuild the workflow, so replay all of it.
                if run is not None:
                    run.close()
                events = task.events
                if not task.is_full_history:
                    events = await store.list_events(task.workflow_id)
                run = WorkflowRun(
                    compiled,
                    task.workflow_id,
                    replay_until=record.processed_sequence,
                    limits=self.limits,
                )
                run.apply(events)
            code = _foreign_code(run, compiled, record.source_hash)
            if code is not None:
                run.close()
                await self._leave_for_its_code(store, task, code, compiled, str(run.failure))
                return
            self._diverged.pop(task.workflow_id, None)
            activation = run.take_activation()
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

    async def _stored_definition(
        self, store: Store, name: str, source_hash: str
    ) -> WorkflowDefinition[Any, Any] | None:
        """A declarative definition registered in the database (`loom wdl register`), in the
        exact version the workflow started with: so a worker needs no `--app` for them, and
        registering a new version never changes a running workflow's code."""
        key = (name, source_hash)
        compiled = self._definitions.get(key)
        if compiled is None:
            from loom import wdl  # the definition language only when one is met

            compiled = await wdl.pinned(store, name, source_hash)
            if compiled is not None:
                self._definitions[key] = compiled
        return compiled

    async def _leave_for_its_code(
        self,
        store: Store,
        task: ClaimedTask,
        code: str,
        compiled: WorkflowDefinition[Any, Any],
        divergence: str,
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
        self._diverged[task.workflow_id] = (code, count, divergence)
        if len(self._diverged) > max(self.max_cached_workflows, 1000):  # bounded memory
            del self._diverged[next(iter(self._diverged))]
        delay = _backoff(DEPLOY_RETRY_DELAY_MS, count) * random.uniform(0.8, 1.2)
        note = (
            f"workflow {task.workflow_id} was run by code with source_hash {code}; "
            f"worker {self.worker_id} runs {compiled.source_hash} and its replay diverges "
            f"({clip(divergence, self.limits.max_error_chars)}); left for a worker running {code} "
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

    def _eager_lease_ms(self) -> int:
        has_room = len(self._inflight) < self.concurrency
        return self.lease_ms if has_room and not self._stopping else 0

    def _committed(
        self, store: Store, run: WorkflowRun, status: WorkflowStatus, result: CommitResult
    ) -> None:
        """Keep a run that committed and is still open; start the tasks it leased to us."""
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
        self, store: Store, task: ClaimedTask, kind: EventKind, payload: dict[str, JSON]
    ) -> None:
        run = self._cache.get(task.workflow_id)
        if run is not None and run.pending_count == 1 and not self._stopping:
            # Sole outstanding command: drive the live run with the result now and record
            # both in one transaction; the store refuses if anything else happened meanwhile.
            del self._cache[task.workflow_id]
            at = store.now_ms()
            expected = (run.cursor, run.epoch)
            run.apply([Event(run.cursor + 1, kind, payload, at)], include_commands=False)
            activation = run.take_activation()
            result = await store.complete_and_continue(
                task,
                NewEvent(kind, payload),
                expected,
                activation,
                _step_progress(run.compiled, activation.step_index),
                at=at,
                eager_lease_ms=self._eager_lease_ms(),
            )
            self._committed(store, run, activation.status, result)
            return
        done = await store.complete_activity(
            task, kind, payload, continue_with=self._cursor_of, lease_ms=self.lease_ms
        )
        await self._continue(store, done)

    # -- activities -------------------------------------------------------------------

    async def _run_activity(self, store: Store, task: ClaimedTask) -> None:
        payload = task.payload
        name = str(payload["name"])
        activity = self._activities.get(name) if not self._overrides else self._override(name)
        if activity is None:
            await self._run_registered(store, task)
            return
        try:
            result = await activity.attempt(payload["input"])
            if not is_json(result):
                raise TypeError(
                    f"activity {name!r} returned {type(result).__name__}, which is not JSON; "
                    f"annotate its return type or return JSON values"
                )
            self._check_result(name, result)
        except Exception as err:
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
                )
                return
            await self._fail_activity(store, task, err, retryable=retryable)
            return
        await self._complete(
            store,
            task,
            EventKind.ACTIVITY_COMPLETED,
            {"seq": payload["seq"], "name": name, "result": result, "attempt": task.attempt},
        )

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
    ) -> None:
        error_type = str(getattr(err, "error_type", type(err).__name__))
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
            for activity in self._activities.values():
                await self._activity_registry.register_native(
                    activity.name,
                    description=activity.description,
                    input_schema=activity.input_schema(),
                    output_schema=activity.output_schema(),
                    retry=RetryPolicy(
                        max_attempts=activity.retry.max_attempts,
                        initial_interval_ms=int(activity.retry.initial_interval * 1000),
                        backoff=activity.retry.backoff,
                        max_interval_ms=int(activity.retry.max_interval * 1000),
                    ),
                )
        return self._activity_registry

    async def _resolve(
        self, store: Store, registry: Registry, task: ClaimedTask
    ) -> ActivityVersion:
        """The version this call runs: the workflow's pin for this spec, else a fresh resolve."""
        pin = task.payload.get("pin")
        if isinstance(pin, dict):
            name, _ = parse_spec(str(task.payload["name"]))
            activity = await registry.get(name, str(pin["version"]))
            if activity.sha256 != pin.get("sha256"):
                raise CorruptModuleError(
                    f"{activity.ref} now has sha256 {activity.sha256}, but this workflow is "
                    f"pinned to {pin.get('sha256')}; versions must stay immutable"
                )
            return activity
        as_of = task.payload.get("as_of")
        if isinstance(as_of, int):
            # The workflow's clock is the store's; the registry stamps its reads with this
            # process's wall clock, which may have stepped away from it.
            as_of += wall_ms() - store.now_ms()
        activity = await registry.resolve(
            str(task.payload["name"]), as_of_ms=as_of if isinstance(as_of, int) else None
        )
        if activity.is_native:
            raise ActivityNotFoundError(
                str(task.payload["name"]),
                reason="it is a native activity that no running worker serves",
            )
        return activity

    async def _run_registered(self, store: Store, task: ClaimedTask) -> None:
        payload = task.payload
        registry = await self._registry()
        try:
            activity = await self._resolve(store, registry, task)
        except (RegistryError, ValueError) as err:
            await self._fail_activity(store, task, err, retryable=False)
            return
        pin: dict[str, JSON] = {"version": activity.version, "sha256": activity.sha256}
        secrets = {s: os.environ[s] for s in activity.grants.secrets if s in os.environ}
        try:
            result = await registry.run(activity, payload["input"], secrets=secrets)
            self._check_result(activity.ref, result.output)
        except PayloadTooLargeError as err:
            await self._fail_activity(store, task, err, retryable=False, extra={"pin": pin})
            return
        except (SandboxError, RegistryError) as err:
            retryable = bool(getattr(err, "retryable", False))
            policy = activity.retry
            if retryable and task.attempt < policy.max_attempts:
                delay_ms = min(
                    policy.initial_interval_ms * policy.backoff ** (task.attempt - 1),
                    policy.max_interval_ms,
                ) * random.uniform(0.8, 1.2)
                await store.retry_activity(
                    task,
                    store.now_ms() + int(delay_ms),
                    {**payload, "pin": pin},
                    f"activity {activity.ref} attempt {task.attempt} failed: "
                    f"{type(err).__name__}: {self._clip(err)}; retrying in {delay_ms / 1000:.2f}s",
                )
                return
            await self._fail_activity(store, task, err, retryable=retryable, extra={"pin": pin})
            return
        await self._complete(
            store,
            task,
            EventKind.ACTIVITY_COMPLETED,
            {
                "seq": payload["seq"],
                "name": payload["name"],
                "result": result.output,
                "attempt": task.attempt,
                "pin": pin,
                "usage": result.usage.model_dump(),
            },
        )


def _step_progress(compiled: WorkflowDefinition[Any, Any], step_index: int) -> StepProgress:
    info = compiled.steps[min(step_index, len(compiled.steps) - 1)].info
    return StepProgress(info.name, info.description)


def _continues(run: WorkflowRun, task: ClaimedTask, epoch: int) -> bool:
    """Whether the claim's events continue the cached `run`.

    Same epoch: nothing committed since the run did. A claim made while the run's commit
    was in flight loaded from the cursor the run had before it; what lies between that and
    the run's cursor now must be the run's own commands (anything else would be news the
    run never saw)."""
    if task.is_full_history or run.epoch != epoch or run.cursor < task.history_after:
        return False
    return all(e.kind in COMMAND_KINDS for e in task.events or () if e.sequence <= run.cursor)


def _foreign_code(
    run: WorkflowRun, compiled: WorkflowDefinition[Any, Any], current_code: str
) -> str | None:
    """The source_hash of the other code a replay diverged from, or None.

    Non-determinism under code other than the code that last ran the workflow is a deploy
    question, not a workflow bug: the same code replaying differently still fails."""
    code = current_code or run.started_by
    if isinstance(run.failure, NonDeterministicWorkflowError) and code != compiled.source_hash:
        return code or None
    return None


def _backoff(bounds: tuple[float, float], attempt: int) -> float:
    """`first` doubled per attempt after the first, capped at `longest`."""
    first, longest = bounds
    return float(min(longest, first * 2.0 ** min(attempt - 1, 16)))


class _Outage:
    """Reports a failing store once when it starts failing and once when it recovers, not
    on every retry (a full disk would otherwise flood the log it cannot write either)."""

    def __init__(self, doing: str) -> None:
        self._doing = doing
        self._failures = 0
        self._since = 0.0

    def failed(self, err: Exception) -> float:
        """Note one failure; returns how long to wait before the next try."""
        if self._failures == 0:
            self._since = time.monotonic()
            logger.error(
                "the store failed while %s (%s: %s); retrying with backoff until it recovers",
                self._doing,
                type(err).__name__,
                err,
            )
        self._failures += 1
        return _backoff(STORE_BACKOFF_SECONDS, self._failures)

    def recovered(self) -> None:
        if self._failures:
            logger.warning(
                "the store recovered after %.1fs (%d failed attempts at %s)",
                time.monotonic() - self._since,
                self._failures,
                self._doing,
            )
            self._failures = 0
