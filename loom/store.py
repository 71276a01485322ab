"""The store interface: whole operations on workflows, history and tasks.

Each method is one transaction (one thread hop); fencing checks happen inside it. SQLite is
the embedded default (`loom.sqlite_store`); PostgreSQL implements the same interface.
"""

from __future__ import annotations

import abc
import asyncio
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from loom._json import JSON
from loom.activation import Activation
from loom.activation import NewWorkflow as NewWorkflow  # where the store API took it from
from loom.breaker import Breaker, BreakerCall, BreakerResult, BreakerState
from loom.clock import StoreClock
from loom.cron import Schedule
from loom.history import Event, EventKind, NewEvent, WorkflowStatus

CursorLookup = Callable[[str], tuple[int, int] | None]
"""workflow_id -> (cursor, epoch) of a cached run, so a claim loads only unseen events."""


def started_payload(spec: NewWorkflow) -> dict[str, JSON]:
    """The WORKFLOW_STARTED event of `spec`: what the store writes, and what a worker that
    runs the first activation before the create (see `Store.create_and_commit`) replays."""
    started: dict[str, JSON] = {
        "input": spec.input,
        "seed": spec.seed,
        "workflow_name": spec.workflow_name,
        "workflow_version": spec.workflow_version,
        "source_hash": spec.source_hash,
    }
    if spec.parent_id:
        started["parent_id"] = spec.parent_id
    if spec.trace:
        started["trace"] = dict(spec.trace)
    return started


@dataclass(frozen=True, slots=True)
class DefinitionRecord:
    """One registered version of a declarative workflow definition (`loom.wdl`)."""

    name: str
    version: str
    sha256: str
    registered_at: int
    document: JSON = None
    """The definition's JSON document; None in listings, which leave it out."""


@dataclass(frozen=True, slots=True)
class WorkflowRecord:
    """One row of `workflows` as the client and CLI see it."""

    workflow_id: str
    workflow_name: str
    workflow_version: str
    status: WorkflowStatus
    input: JSON
    state: dict[str, JSON]
    error: dict[str, JSON] | None
    owner: str | None
    agent: str | None
    parent_id: str | None
    current_step: str | None
    step_description: str | None
    step_index: int
    total_steps: int
    last_sequence: int
    processed_sequence: int
    epoch: int
    created_at: int
    updated_at: int


@dataclass(frozen=True, slots=True)
class TaskWorkflow:
    """What a worker needs of the workflow row to run a workflow task (no JSON parsing)."""

    workflow_name: str
    epoch: int
    processed_sequence: int
    owner: str | None
    source_hash: str = ""
    """The code that last committed commands for it (see `Worker._leave_for_its_code`)."""


@dataclass(slots=True)
class ClaimedTask:
    """A task leased to this worker; `lease` = (owner, attempt) is the fencing token."""

    task_id: int
    task_key: str
    kind: str
    workflow_id: str
    payload: dict[str, JSON]
    attempt: int
    owner: str
    workflow: TaskWorkflow | None = None
    events: list[Event] | None = None
    recoveries: int = 0
    """Claims in a row, this one included, that found a worker had died holding the task."""
    history_after: int = 0
    """`events` start after this sequence: the cached run's cursor the claim saw (0 = all).
    The worker continues its cached run with them only if that run's epoch is the
    workflow's and its cursor is at or after this one; otherwise it loads the full history."""

    @property
    def is_full_history(self) -> bool:
        return self.history_after == 0


@dataclass(frozen=True, slots=True)
class CommitResult:
    is_committed: bool
    needs_rerun: bool = False
    epoch: int = 0
    last_sequence: int = 0
    is_recorded: bool = True
    """For `complete_and_continue`: whether the activity result itself was recorded."""
    tasks: tuple[ClaimedTask, ...] = ()
    """Activity tasks created already leased to the committing worker (eager dispatch)."""
    wakes_others: bool = False
    """A close that made other workflows' tasks runnable (its parent's, its children's)."""


@dataclass(frozen=True, slots=True)
class Completion:
    is_recorded: bool
    next_task: ClaimedTask | None = None
    """The workflow task, leased to the caller, when it asked to continue the workflow."""


@dataclass(frozen=True, slots=True)
class Admission:
    """A circuit breaker's answer to an attempt (see `Store.admit_attempt`)."""

    is_admitted: bool
    retry_at: int | None = None
    """Deferred: the task was released until then, its claim uncounted."""
    is_expired: bool = False
    """Refused: the breaker stays open past the call's deadline; the task is still leased."""
    is_held: bool = True
    """False when the lease was lost meanwhile: the caller drops the task."""
    state: BreakerState | None = None
    waited_ms: int = 0
    """Refused: how long the call had been deferred."""


@dataclass(frozen=True, slots=True)
class StepProgress:
    name: str
    description: str


@dataclass(frozen=True, slots=True)
class StoreStats:
    """Counts for `loom stats`: every status is present, zero when empty."""

    workflows: dict[str, int]
    tasks: dict[str, int]


@dataclass(frozen=True, slots=True)
class Diagnosis:
    """Health facts for `loom doctor`.

    `stuck` are open workflows with work no task will ever pick up: PENDING, or with
    unprocessed events, and no task row. `idle` are RUNNING with everything processed and no
    task, waiting for a signal or a child (normal, but shown so operators can tell). `lost`
    are RUNNING with no task and NOTHING to wait for: no pending signal wait, no open child.
    Nothing can ever move them; the engine must never produce one, so each is a defect.
    """

    backend: str
    settings: dict[str, str]
    schema_version: int
    latest_schema_version: int
    expired_leases: list[tuple[int, str, str]]
    stuck: list[str]
    idle: int
    lost: list[str] = field(default_factory=list)
    suspended: int = 0
    """SUSPENDED workflows: parked until an operator resumes them (not a store defect)."""
    suspended_ids: list[str] = field(default_factory=list)
    """The longest-suspended of them (at most 20), oldest first."""


WAIT_KINDS = (
    EventKind.SIGNAL_WAIT_STARTED,
    EventKind.SIGNAL_RECEIVED,
    EventKind.TIMER_FIRED,
    EventKind.CHILD_STARTED,
    EventKind.CHILD_COMPLETED,
    EventKind.CHILD_FAILED,
)
"""The only events `awaits_something` reads: stores load just these for `diagnose`."""


def split_idle(
    candidates: Sequence[str], events: Iterable[tuple[str, Event]]
) -> tuple[int, list[str]]:
    """Sort open workflows with no task into (idle count, lost ids), in `candidates` order.

    `events` are the WAIT_KINDS events of the candidates, as (workflow_id, event) in sequence
    order per workflow: both stores read them in one query and share this decision.
    """
    by_workflow: dict[str, list[Event]] = {workflow_id: [] for workflow_id in candidates}
    for workflow_id, event in events:
        by_workflow[workflow_id].append(event)
    lost = [wid for wid in candidates if not awaits_something(by_workflow[wid])]
    return len(candidates) - len(lost), lost


def awaits_something(events: Sequence[Event]) -> bool:
    """Whether a workflow with no task row legitimately waits: for a signal or a child.

    Follows the replay's signal rules (a signal with no waiter is buffered for the next wait
    of that name; a wait's timeout timer firing ends that wait) without running any code, so
    `loom doctor` can tell a parked workflow from one that nothing will ever wake. A child is
    open until its CHILD_COMPLETED/FAILED, which its close appends in the same transaction.
    """
    waiting: dict[str, list[int]] = {}
    buffered: dict[str, int] = {}
    children: set[int] = set()
    for event in events:
        payload = event.payload
        if event.kind is EventKind.SIGNAL_WAIT_STARTED:
            name = str(payload.get("key"))
            if buffered.get(name, 0):
                buffered[name] -= 1
            else:
                waiting.setdefault(name, []).append(int(payload["seq"]))
        elif event.kind is EventKind.SIGNAL_RECEIVED:
            name = str(payload.get("name"))
            if waiting.get(name):
                waiting[name].pop(0)
            else:
                buffered[name] = buffered.get(name, 0) + 1
        elif event.kind is EventKind.TIMER_FIRED:
            for seqs in waiting.values():
                if payload.get("seq") in seqs:
                    seqs.remove(int(payload["seq"]))
        elif event.kind is EventKind.CHILD_STARTED:
            children.add(int(payload["seq"]))
        elif event.kind in (EventKind.CHILD_COMPLETED, EventKind.CHILD_FAILED):
            children.discard(int(payload["seq"]))
    return bool(children) or any(waiting.values())


class Store(abc.ABC):
    """Persistence for the engine; every method is one atomic operation."""

    wakeups: Wakeups
    clock: StoreClock
    """The one clock leases, timers and retry times of this database are judged on."""

    def now_ms(self) -> int:
        """The store's time; what a worker writes as a due time must be on this clock."""
        return self.clock.now_ms()

    @property
    def is_pushing_closes(self) -> bool:
        """Whether every process's closes reach `wakeups.workflow_closed` here (PostgreSQL
        while it LISTENs): waiting handles then need polling only as a safety net."""
        return False

    @property
    def is_numbering_closes(self) -> bool:
        """Whether every close takes the next number in commit order (SQLite), so waiting
        handles can poll `closed_since` (O(closed since)) instead of their statuses."""
        return False

    @abc.abstractmethod
    async def create_workflow(self, spec: NewWorkflow) -> tuple[WorkflowRecord, bool]:
        """Insert a workflow with its WORKFLOW_STARTED event and first task.

        Returns (record, created); an existing id of the same type is returned unchanged.
        """

    @abc.abstractmethod
    async def create_and_commit(
        self,
        spec: NewWorkflow,
        owner: str,
        lease_ms: int,
        activation: Activation,
        seen_sequence: int,
        step: StepProgress | None,
        *,
        now: int,
        eager_lease_ms: int = 0,
    ) -> tuple[WorkflowRecord, bool, CommitResult | None]:
        """Create the workflow and commit its first activation, computed by `owner` from its
        WORKFLOW_STARTED event at `now`, in one transaction: one commit (one fsync) where a
        start, a claim and a commit took three. An existing workflow is left as it is
        (created False, no result)."""

    @abc.abstractmethod
    async def claim_tasks(
        self,
        owner: str,
        limit: int,
        lease_ms: int,
        cursor_of: CursorLookup,
        *,
        avoid: Sequence[str] = (),
    ) -> list[ClaimedTask]:
        """Lease up to `limit` due tasks (expired leases included), with unseen events.

        `avoid`: task keys this claimer knows it cannot run now (another code version's
        workflows): left due for other workers instead of bouncing back to it."""

    @abc.abstractmethod
    async def commit_workflow_task(
        self,
        task: ClaimedTask,
        activation: Activation,
        seen_sequence: int,
        step: StepProgress | None,
        *,
        eager_lease_ms: int = 0,
    ) -> CommitResult:
        """Write one activation atomically if `task`'s lease is still held.

        With `eager_lease_ms`, new activity tasks are created leased to the same owner and
        returned, so the worker runs them without a claim round trip.
        """

    @abc.abstractmethod
    async def complete_and_continue(
        self,
        task: ClaimedTask,
        result: NewEvent,
        expected: tuple[int, int],
        activation: Activation,
        step: StepProgress | None,
        *,
        at: int,
        eager_lease_ms: int = 0,
        breaker: BreakerResult | None = None,
    ) -> CommitResult:
        """Record an activity result and the activation the live run computed from it, in
        one transaction, if the history still ends at `expected` = (last sequence, epoch) and
        no workflow task exists; otherwise record only the result (`is_committed` False).
        Every event is written with time `at`, the time the run saw."""

    @abc.abstractmethod
    async def complete_activity(
        self,
        task: ClaimedTask,
        kind: EventKind,
        payload: dict[str, JSON],
        *,
        continue_with: CursorLookup | None = None,
        lease_ms: int = 0,
        breaker: BreakerResult | None = None,
    ) -> Completion:
        """Record an activity's final outcome once (not if the lease was lost).

        `breaker`: the attempt's outcome for its circuit breaker, in the same transaction.

        With `continue_with`, and when the caller has the workflow cached, its workflow task
        is leased to the caller in the same transaction and returned with the new events.
        """

    @abc.abstractmethod
    async def retry_activity(
        self,
        task: ClaimedTask,
        run_at: int,
        payload: dict[str, JSON],
        error: str,
        *,
        breaker: BreakerResult | None = None,
    ) -> bool:
        """Release the task for another attempt at `run_at`; False if the lease was lost."""

    @abc.abstractmethod
    async def admit_attempt(self, task: ClaimedTask, call: BreakerCall) -> Admission:
        """Ask the activity's circuit breaker whether this attempt runs now.

        Closed: yes. Open, or half-open with another probe out: the task is released until
        the breaker should be asked again, and its claim does not count as an attempt.
        Open past its reset time: this attempt becomes the half-open probe."""

    @abc.abstractmethod
    async def list_breakers(self) -> list[Breaker]:
        """Every circuit breaker that has recorded a failure, by activity name."""

    @abc.abstractmethod
    async def reset_breaker(self, activity_name: str) -> bool:
        """Close a breaker by hand (its deferred attempts become due); False if unknown."""

    # -- schedules -----------------------------------------------------------------------

    @abc.abstractmethod
    async def put_schedule(self, schedule: Schedule) -> Schedule:
        """Create or replace the schedule of this name."""

    @abc.abstractmethod
    async def get_schedule(self, name: str) -> Schedule | None: ...

    @abc.abstractmethod
    async def list_schedules(self) -> list[Schedule]: ...

    @abc.abstractmethod
    async def set_schedule_paused(
        self, name: str, is_paused: bool, next_fire_at: int | None = None
    ) -> Schedule:
        """Pause or resume; ScheduleNotFoundError when unknown."""

    @abc.abstractmethod
    async def delete_schedule(self, name: str) -> None:
        """ScheduleNotFoundError when unknown."""

    @abc.abstractmethod
    async def due_schedules(self, workflow_names: Sequence[str], limit: int) -> list[Schedule]:
        """Unpaused schedules of these workflows whose next tick is due on the store clock."""

    @abc.abstractmethod
    async def fire_schedule(
        self,
        name: str,
        expected_next: int,
        next_fire_at: int,
        starts: Sequence[NewWorkflow],
        skipped: int,
    ) -> list[str]:
        """Start one pass of a due schedule if it is still at `expected_next` (see
        `operations.fire_schedule`); returns the ids started."""

    @abc.abstractmethod
    async def fire_timer(
        self, task: ClaimedTask, *, continue_with: CursorLookup | None = None, lease_ms: int = 0
    ) -> Completion:
        """Append TIMER_FIRED for a due timer (see `complete_activity` for continuation)."""

    @abc.abstractmethod
    async def signal_workflow(self, workflow_id: str, name: str, payload: JSON) -> None:
        """Buffer a signal in history and wake the workflow."""

    @abc.abstractmethod
    async def cancel_workflow(self, workflow_id: str, reason: str | None) -> bool:
        """Request cancellation; False when the workflow had already finished."""

    @abc.abstractmethod
    async def suspend_workflow(
        self, workflow_id: str, error: dict[str, JSON], task: ClaimedTask | None = None
    ) -> bool:
        """Park an open workflow (SUSPENDED, `error` kept) until `resume_workflow`.

        A worker passes the `task` it suspends from: released under its lease, kept for the
        resume. False when it was suspended already or the worker's lease was lost.
        Raises WorkflowNotFoundError, or WorkflowClosedError for a finished workflow.
        """

    @abc.abstractmethod
    async def resume_workflow(self, workflow_id: str) -> bool:
        """Make a SUSPENDED workflow run again (full replay with current code); False when
        it was not suspended. Raises WorkflowNotFoundError / WorkflowClosedError."""

    @abc.abstractmethod
    async def fork_workflow(
        self, workflow_id: str, new_id: str, at: int | None = None
    ) -> WorkflowRecord:
        """Start `new_id` with a copy of `workflow_id`'s history before sequence `at`
        (default: before its first failure); it continues with current code."""

    @abc.abstractmethod
    async def release_claims(self, tasks: Sequence[ClaimedTask]) -> None:
        """Give back claimed tasks not started, due at once; `recoveries` kept."""

    @abc.abstractmethod
    async def deliver_message(self, spec: NewWorkflow, payload: dict[str, JSON]) -> bool:
        """Append a message to an actor's mailbox, creating the actor (`spec`) if absent, in
        one transaction; True when it was created. Refused for a closed actor."""

    @abc.abstractmethod
    async def take_reply(self, reply_id: str) -> dict[str, JSON] | None:
        """Remove and return the reply to an `ask`, or None while it has not been written."""

    @abc.abstractmethod
    async def list_actors(
        self, *, workflow_name: str | None = None, limit: int = 100
    ) -> list[WorkflowRecord]:
        """Actor workflows (all types, or the one named `workflow_name`), by id."""

    @abc.abstractmethod
    async def extend_leases(self, owner: str, lease_ms: int) -> None:
        """Heartbeat: push the expiry of every task leased by `owner`."""

    @abc.abstractmethod
    async def release_tasks(self, owner: str) -> None:
        """Give back every task leased by `owner` (graceful shutdown)."""

    @abc.abstractmethod
    async def get_workflow(self, workflow_id: str) -> WorkflowRecord | None: ...

    @abc.abstractmethod
    async def get_workflows(self, workflow_ids: Sequence[str]) -> list[WorkflowRecord]: ...

    @abc.abstractmethod
    async def get_statuses(self, workflow_ids: Sequence[str]) -> dict[str, WorkflowStatus]:
        """Status of each existing workflow among `workflow_ids` (one light query)."""

    @abc.abstractmethod
    async def closed_since(self, mark: int | None, version: int | None, limit: int) -> CloseScan:
        """The workflows any process closed after close number `mark` (None: just the
        current mark), where `is_numbering_closes`; `version` is the last scan's, which lets
        a scan that finds nothing changed read no rows."""

    @abc.abstractmethod
    async def list_events(self, workflow_id: str) -> list[Event]: ...

    @abc.abstractmethod
    async def list_workflows(
        self,
        *,
        status: WorkflowStatus | None = None,
        name: str | None = None,
        owner: str | None = None,
        statuses: Sequence[WorkflowStatus] | None = None,
        limit: int = 100,
    ) -> list[WorkflowRecord]: ...

    @abc.abstractmethod
    async def list_logs(self, workflow_id: str) -> list[tuple[int, str, str]]: ...

    @abc.abstractmethod
    async def egress_totals(self, activity: str) -> dict[str, dict[str, JSON]]:
        """Per version of `activity`: completed calls that made HTTP requests, requests,
        bytes out/in, time in requests (ms) and the hosts called (the egress journal)."""

    @abc.abstractmethod
    async def count_tasks(self) -> dict[str, int]:
        """Task counts by state (due, leased, scheduled), for diagnostics and tests."""

    @abc.abstractmethod
    async def task_horizon(self) -> tuple[int, int | None]:
        """(tasks due or leased now, due time of the earliest later task or None): what a
        time-skipping test environment needs to know before jumping its clock."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    async def reserve(self, concurrency: int) -> None:
        """Size connection resources for `concurrency` operations at once (workers call it).

        A no-op for SQLite's single writer; PostgreSQL grows its connection pool.
        """
        return None

    # -- operator views (read-only) ------------------------------------------------------

    @abc.abstractmethod
    async def collect_stats(self) -> StoreStats:
        """Workflow counts by status and the task queue (due, scheduled, leased, expired)."""

    @abc.abstractmethod
    async def llm_token_totals(self) -> dict[str, dict[str, int]]:
        """Tokens of every recorded model call by model: `{model: {prompt, completion}}`."""

    @abc.abstractmethod
    async def diagnose(self) -> Diagnosis:
        """Connection settings, schema version, expired leases and stuck workflows."""

    # -- declarative workflow definitions -------------------------------------------------

    @abc.abstractmethod
    async def register_definition(
        self, name: str, version: str, sha256: str, document: JSON
    ) -> bool:
        """Store an immutable version; False when this exact version (same sha256) already
        is. Raises DefinitionConflictError when the version exists with other content."""

    @abc.abstractmethod
    async def list_definitions(self, name: str | None = None) -> list[DefinitionRecord]:
        """Registered versions (without documents), by name then registration order."""

    @abc.abstractmethod
    async def get_definition(
        self, name: str, *, version: str | None = None, sha256_prefix: str | None = None
    ) -> DefinitionRecord | None:
        """One version with its document: by exact version, or by the sha256 (prefix) a
        running workflow pinned as its source hash."""


class Starter(Protocol):
    """What a worker offers a starter in its process (see `Store.create_and_commit`)."""

    def serves(self, workflow_name: str) -> bool: ...

    async def start(self, store: Store, spec: NewWorkflow) -> tuple[WorkflowRecord, bool]: ...


class Wakeups:
    """In-process notifications: new runnable tasks and closed workflows.

    Listeners may live on other event loops; each is called on its own loop.
    """

    def __init__(self) -> None:
        self._task_listeners: list[tuple[asyncio.AbstractEventLoop, Callable[[], None]]] = []
        self._closed: dict[str, list[asyncio.Future[Outcome | None]]] = {}
        # Handles wait on their own loops while PostgreSQL's DB thread reports closes made
        # by other processes: the waiter table is shared across threads.
        self._closed_lock = threading.Lock()
        self._progress: list[tuple[asyncio.AbstractEventLoop, Callable[[], None]]] = []
        self._starters: list[tuple[asyncio.AbstractEventLoop, Starter]] = []

    def on_start(self, starter: Starter) -> Callable[[], None]:
        """A worker on this loop that runs first activations before the create commits."""
        entry = (asyncio.get_running_loop(), starter)
        self._starters.append(entry)
        return lambda: self._starters.remove(entry)

    def starter_for(self, workflow_name: str) -> Starter | None:
        """An in-process worker on the caller's loop that serves `workflow_name`, or None."""
        loop = asyncio.get_running_loop()
        for owner_loop, starter in self._starters:
            if owner_loop is loop and starter.serves(workflow_name):
                return starter
        return None

    def on_tasks(self, callback: Callable[[], None]) -> Callable[[], None]:
        entry = (asyncio.get_running_loop(), callback)
        self._task_listeners.append(entry)
        return lambda: self._task_listeners.remove(entry)

    def on_progress(self, callback: Callable[[], None]) -> Callable[[], None]:
        entry = (asyncio.get_running_loop(), callback)
        self._progress.append(entry)
        return lambda: self._progress.remove(entry)

    def tasks_ready(self) -> None:
        _call_all(self._task_listeners)

    def progress_changed(self) -> None:
        _call_all(self._progress)

    def closed_future(self, workflow_id: str) -> asyncio.Future[Outcome | None]:
        future: asyncio.Future[Outcome | None] = asyncio.get_running_loop().create_future()
        with self._closed_lock:
            self._closed.setdefault(workflow_id, []).append(future)
        return future

    def forget(self, workflow_id: str, future: asyncio.Future[Outcome | None]) -> None:
        with self._closed_lock:
            waiters = self._closed.get(workflow_id)
            if waiters and future in waiters:
                waiters.remove(future)
                if not waiters:
                    del self._closed[workflow_id]
                    self._emptied()

    def _emptied(self) -> None:
        """A dict never shrinks as keys leave: once the last waiter of a burst of 100k has
        gone, a fresh one lets its megabytes go (under `_closed_lock`)."""
        if not self._closed:
            self._closed = {}

    def activation_committed(
        self, workflow_id: str, activation: Activation, result: CommitResult
    ) -> None:
        """What one committed activation makes happen in this process (both stores, both
        commit paths): runnable tasks it left unleased, the close, and a progress change."""
        if len(result.tasks) < len(activation.tasks) or activation.children or result.needs_rerun:
            self.tasks_ready()
        for reply in activation.replies:
            if reply.workflow_id is None:
                self.workflow_closed(reply_key(reply.reply_id))
        if activation.messages or activation.replies:
            self.tasks_ready()
        if activation.status is not WorkflowStatus.RUNNING:
            state = {} if activation.state is None else activation.state  # None: refused
            outcome = Outcome(activation.status, state, activation.error)
            self.workflow_closed(workflow_id, outcome)
            self.closing_tasks_ready(workflow_id, result.wakes_others)
        self.progress_changed()

    def closing_tasks_ready(self, workflow_id: str, wakes_others: bool) -> None:
        """A close that woke a parent or cancelled children made their tasks runnable; most
        closes make nothing runnable, and waking the workers then cost each a claim that
        found nothing."""
        if wakes_others:
            self.tasks_ready()

    def workflow_closed(self, workflow_id: str, outcome: Outcome | None = None) -> None:
        """Wake in-process waiters; `outcome` spares them reading the final row back."""
        with self._closed_lock:
            waiters = self._closed.pop(workflow_id, ())
            self._emptied()
        for future in waiters:
            loop = future.get_loop()
            if loop.is_closed():
                continue
            loop.call_soon_threadsafe(_set_done, future, outcome)


def reply_key(reply_id: str) -> str:
    """The key `Wakeups.closed_future` waits on for the reply to an `ask` (not an id any
    workflow can have: ids of actors start with `actor:`, this with `reply:`)."""
    return f"reply:{reply_id}"


@dataclass(frozen=True, slots=True)
class CloseScan:
    """What one `Store.closed_since` read found."""

    mark: int
    """The highest close number seen: pass it to the next scan."""
    version: int | None
    """The change counter as of this read (None: read the rows next time regardless)."""
    workflow_ids: list[str]
    """Closed after the previous mark, oldest first."""
    is_complete: bool
    """False when the limit cut the rows short: scan again at once."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a workflow finished, as its final commit wrote it."""

    status: WorkflowStatus
    state: dict[str, JSON]
    error: dict[str, JSON] | None


def _set_done(future: asyncio.Future[Outcome | None], outcome: Outcome | None) -> None:
    if not future.done():
        future.set_result(outcome)


def _call_all(listeners: list[tuple[asyncio.AbstractEventLoop, Callable[[], None]]]) -> None:
    try:
        current = asyncio.get_running_loop()
    except RuntimeError:
        current = None
    for loop, callback in list(listeners):
        if loop is current:
            callback()
        elif not loop.is_closed():
            loop.call_soon_threadsafe(callback)
