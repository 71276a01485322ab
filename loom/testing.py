"""Testing workflows like code: an in-process environment whose clock skips ahead, activity
test doubles, and replay of exported histories against the current code.

Time skipping rests on one seam: every durable time the engine reads (timer and retry due
times, leases, event stamps, `ctx.now()`) comes from `Store.clock`. The environment installs a
`VirtualClock` there; the wall clock is never patched, so asyncio and activities run as usual.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import inspect
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from loom._export import read_history
from loom._json import JSON
from loom.activity import DEFAULT_TIMEOUT_SECONDS, Activity, RetryOptions, declared_activities
from loom.client import WorkflowHandle, discard_store, get_store, start_workflow
from loom.clock import StoreClock, monotonic_ms
from loom.replay import WorkflowRun
from loom.store import Store
from loom.worker import Worker
from loom.workflow import CompiledWorkflow, Workflow

__all__ = ["VirtualClock", "WorkflowEnvironment", "replay"]

StateT = TypeVar("StateT")
AnyWorkflow = type[Workflow[Any, Any]] | CompiledWorkflow[Any, Any]

IDLE_POLL_SECONDS = 0.002
"""How often a skipping environment looks at the task queue: a look is one indexed query,
and a jump waits for the work before it to settle, so this bounds each jump's latency."""
WORKER_POLL_SECONDS = 0.05
"""The environment's worker polls often: without skipping, a due timer is noticed this soon."""


class VirtualClock(StoreClock):
    """The store's clock plus a forward offset: it runs at wall speed and jumps when skipped.

    Installed as `Store.clock`, it moves everything durable at once: timers and retry
    backoffs come due, leases stay consistent (the environment only jumps while no task is
    leased), and events are stamped with the virtual time that `ctx.now()` returns.
    """

    def __init__(self, start_ms: int) -> None:
        super().__init__(start_ms, monotonic_ms())
        self.skipped_ms = 0
        """How far this clock has jumped ahead of the time it would otherwise show."""

    def now_ms(self) -> int:
        return super().now_ms() + self.skipped_ms

    def skip_to(self, at_ms: int) -> None:
        """Jump to `at_ms`; never backwards (a jump to the past is a no-op)."""
        self.skipped_ms += max(0, at_ms - self.now_ms())


class WorkflowEnvironment:
    """An in-process worker on a temporary SQLite database, for tests.

    `async with WorkflowEnvironment(workflows=[...], activities=[...]) as env:` then
    `handle = await env.start(MyWorkflow, input)` and `await handle.result(timeout=10)`.

    With `time_skipping` (the default), whenever every workflow waits on a timer (no task is
    due or running), the clock jumps to the next due time: a 30-day `ctx.sleep` or a retry
    backoff passes at once. Jumps happen only while the test awaits `result()` of a handle
    from this environment, or inside `await env.sleep(...)`; between those virtual time runs
    at wall speed, so a signal the test sends cannot race a timeout that is days away.

    `activities` defaults to every `@loom.activity` declared in this process. `doubles` maps
    an activity name to a plain function (sync or async) that serves its calls instead: a
    native activity's double takes the same arguments, a registered (WebAssembly) one's,
    e.g. `{"llm-chat": fake_chat}` for `ctx.activity("llm-chat@^1", {...})`, takes the one
    JSON input and returns the JSON output, and no module needs to be registered.
    """

    def __init__(
        self,
        workflows: Iterable[AnyWorkflow] = (),
        activities: Iterable[Activity[..., Any]] | None = None,
        *,
        time_skipping: bool = True,
        doubles: Mapping[str, Callable[..., Any]] | None = None,
        database: str | Path | None = None,
    ) -> None:
        self.time_skipping = time_skipping
        self._workflows = {c.name: c for c in map(_compiled, workflows)}
        self._is_serving_declared = activities is None
        self._activities = list(declared_activities() if activities is None else activities)
        natives = {a.name: a for a in declared_activities() + self._activities}
        self._doubles = {
            name: _double(name, fn, natives.get(name)) for name, fn in (doubles or {}).items()
        }
        self._given_database = database
        self._directory: str | None = None
        self.database = ""
        """The environment's database path (for `loom` commands or `get_handle`)."""
        self._store: Store | None = None
        self._clock: VirtualClock | None = None
        self._worker: Worker | None = None
        self._skipper: asyncio.Task[None] | None = None
        self._skipping_count = 0

    # -- lifecycle --------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._given_database is None:
            self._directory = tempfile.mkdtemp(prefix="loom-test-")
            self.database = str(Path(self._directory) / "loom.db")
        else:
            self.database = str(self._given_database)
        store = self._store = get_store(self.database)
        if self.time_skipping:
            # The seam: the one clock every durable time of this database is read from.
            self._clock = VirtualClock(store.now_ms())
            store.clock = self._clock
        try:
            await self._start_worker()
        except BaseException:
            await self._close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._close()

    async def _start_worker(self) -> None:
        self._worker = Worker(
            self._workflows.values(),
            self._activities,
            database=self.database,
            poll_interval=WORKER_POLL_SECONDS,
            tune_gc=False,
            overrides=self._doubles,
            handbacks=0,  # the only worker: a name it lacks suspends at once, no waiting
        )
        await self._worker.__aenter__()

    async def _close(self) -> None:
        await self._stop_skipper()
        if self._worker is not None:
            await self._worker.stop()
            self._worker = None
        if self._store is not None:
            discard_store(self.database)
            await self._store.close()
            self._store = None
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
            self._directory = None

    # -- what tests call --------------------------------------------------------------

    def now(self) -> datetime:
        """The environment's current time (virtual when skipping), as `ctx.now()` sees it."""
        return datetime.fromtimestamp(self._running_store().now_ms() / 1000, tz=UTC)

    async def sleep(self, duration: timedelta | float) -> None:
        """Let `duration` (seconds or a timedelta) pass for the workflows.

        Skipping: jumps through every timer due within it, in order, letting the work each
        one wakes finish before the next, and returns at exactly now + duration with nothing
        left running. Without skipping: a real `asyncio.sleep`.
        """
        seconds = duration.total_seconds() if isinstance(duration, timedelta) else duration
        if seconds < 0:
            raise ValueError(f"env.sleep() takes a duration >= 0, got {duration!r}")
        if self._clock is None:
            await asyncio.sleep(seconds)
            return
        await self._skip(until_ms=self._clock.now_ms() + round(seconds * 1000))

    async def start(
        self,
        workflow: type[Workflow[Any, StateT]] | CompiledWorkflow[Any, StateT],
        input: Any = None,
        *,
        workflow_id: str | None = None,
        owner: str | None = None,
    ) -> WorkflowHandle[StateT]:
        """Start a workflow in the environment; its type is served even if not listed.

        The handle's `result()` skips time while it waits (see the class docstring).
        """
        compiled = _compiled(workflow)
        is_new = self._workflows.get(compiled.name) is not compiled
        self._workflows[compiled.name] = compiled
        if self._is_serving_declared and self._activities != declared_activities():
            self._activities, is_new = declared_activities(), True  # declared since: serve too
        if is_new:
            assert self._worker is not None, "use the environment inside `async with`"
            await self._worker.stop()  # a worker's tables are fixed: start another
            await self._start_worker()
        started = await start_workflow(
            compiled, input, workflow_id=workflow_id, owner=owner, database=self.database
        )
        return self.get_handle(started.workflow_id, compiled)

    def get_handle(
        self,
        workflow_id: str,
        workflow: type[Workflow[Any, StateT]] | CompiledWorkflow[Any, StateT] | None = None,
    ) -> WorkflowHandle[StateT]:
        """Reattach to a workflow of this environment (a child, say) by id."""
        compiled = None if workflow is None else _compiled(workflow)
        return _SkippingHandle(workflow_id, self._running_store(), compiled, self)

    # -- time skipping ----------------------------------------------------------------

    def _running_store(self) -> Store:
        if self._store is None:
            raise RuntimeError("use the WorkflowEnvironment inside `async with`")
        return self._store

    @contextlib.asynccontextmanager
    async def skipping(self) -> AsyncIterator[None]:
        """Skip time in the background while the block runs (what handle results do)."""
        if self._clock is None:
            yield
            return
        self._skipping_count += 1
        if self._skipper is None:
            self._skipper = asyncio.create_task(self._skip(until_ms=None))
        try:
            yield
        finally:
            self._skipping_count -= 1
            if self._skipping_count == 0:
                await self._stop_skipper()

    async def _stop_skipper(self) -> None:
        skipper, self._skipper = self._skipper, None
        if skipper is not None:
            skipper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await skipper

    async def _skip(self, *, until_ms: int | None) -> None:
        """Jump to each next due task whenever nothing is due or leased; with `until_ms`,
        stop there once nothing due before it is left, else run until cancelled.

        Jumping only while no task is leased keeps leases valid: a jump can expire no lease.
        The target is the earliest due time, so if a task came due meanwhile the jump is a
        no-op (`skip_to` never goes back).
        """
        assert self._clock is not None and self._store is not None
        while True:
            busy, next_due = await self._store.task_horizon()
            if busy:
                await asyncio.sleep(IDLE_POLL_SECONDS)
            elif until_ms is not None and (next_due is None or next_due > until_ms):
                self._clock.skip_to(until_ms)
                return
            elif next_due is None:
                await asyncio.sleep(IDLE_POLL_SECONDS)  # waits for a signal: nothing to skip
            else:
                self._clock.skip_to(next_due)
                self._store.wakeups.tasks_ready()


class _SkippingHandle(WorkflowHandle[StateT]):
    """A handle whose `result()` lets the environment skip time while it waits."""

    def __init__(
        self,
        workflow_id: str,
        store: Store,
        compiled: CompiledWorkflow[Any, StateT] | None,
        env: WorkflowEnvironment,
    ) -> None:
        super().__init__(workflow_id, store, compiled)
        self._env = env

    async def result(self, timeout: float | None = None) -> StateT:
        async with self._env.skipping():
            return await super().result(timeout)


def replay(workflow: AnyWorkflow, path: str | Path) -> None:
    """Replay an exported history (`loom history export ID -o FILE`) against current code.

    Returns when the code issues exactly the recorded commands. Raises
    NonDeterministicWorkflowError naming the expected and the actual command when it does not;
    HistoryFileError when `path` is not an export; ValueError when it is another type's.
    """
    compiled = _compiled(workflow)
    exported = read_history(path)
    if exported.workflow_name != compiled.name:
        raise ValueError(
            f"{path} is a history of workflow {exported.workflow_name!r}, not of "
            f"{compiled.name!r}; replay it against that workflow class"
        )
    last = exported.events[-1].sequence if exported.events else 0
    run = WorkflowRun(
        compiled, exported.workflow_id, replay_until=last, registry={compiled.name: compiled}
    )
    try:
        run.apply(exported.events)
        failure = run.failure
    finally:
        run.close()
    if failure is not None:
        raise failure


def _compiled(workflow: AnyWorkflow) -> CompiledWorkflow[Any, Any]:
    return workflow if isinstance(workflow, CompiledWorkflow) else workflow.compile()


def _double(
    name: str, fn: Callable[..., Any], native: Activity[..., Any] | None
) -> Activity[..., Any]:
    """A native activity serving `name`: a native's double keeps its retry and timeout and
    takes its arguments; a registered activity's double takes the one JSON input."""
    if isinstance(fn, Activity):
        return dataclasses.replace(fn, name=name, _adapters=None, _signature=None)
    call = _as_async(fn)
    if native is not None:
        return Activity(fn=call, name=name, retry=native.retry, timeout=native.timeout)
    return _WholeInputActivity(
        fn=call, name=name, retry=RetryOptions(), timeout=DEFAULT_TIMEOUT_SECONDS
    )


@dataclasses.dataclass(slots=True)
class _WholeInputActivity(Activity[..., Any]):
    """A registered activity's double: called with the call's one JSON input, as a module is."""

    async def invoke(self, arguments: JSON) -> JSON:
        result: JSON = await self.fn(arguments)
        return result


def _as_async(fn: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.iscoroutinefunction(fn):
        return fn

    @functools.wraps(fn)
    async def call(*args: Any, **kwargs: Any) -> Any:
        result = fn(*args, **kwargs)
        return await result if inspect.isawaitable(result) else result

    return call
