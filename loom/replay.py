"""Replay: drives workflow code deterministically against its event history.

A `WorkflowRun` owns one workflow's coroutines on a private event loop that only runs when
events are delivered, so live continuation and cold replay execute the same way. It turns
the commands the code issues into an `Activation` (new events and tasks) for the store; it
never touches the database itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from loom._json import JSON, is_json
from loom._patch import adopt, changed_keys, plain
from loom.activation import Activation, ChildStart, Message, Reply, Restart, TaskSpec
from loom.definition import WorkflowDefinition
from loom.exceptions import (
    ActivityFailedError,
    CancelledWorkflowError,
    LoomError,
    NonDeterministicWorkflowError,
    PayloadTooLargeError,
    StateSerializationError,
    WorkflowCancelledError,
    WorkflowExecutionError,
)
from loom.history import (
    COMMAND_KINDS,
    STATE_KINDS,
    Event,
    EventKind,
    NewEvent,
    WorkflowStatus,
    encode_error,
)
from loom.limits import Limits, encoded_size
from loom.saga import SHIELDED

logger = logging.getLogger("loom.workflow")

STATE_SNAPSHOT_MIN_BYTES = 16 * 1024
"""The stored state is rewritten whole once the changes since it add up to its own size
(and at least this much): a step then costs its change, amortised, however big the state."""
REFUSED = "refused"
"""Payload flag of a result event the run recorded itself for a command it refused (an
oversized argument): no task ran, and replay must not take the event's time as news."""
REMOVED_KEYS = "removed"
"""STATE_UPDATE payload field: the keys `ctx.state.update(fn)` removed (sorted)."""


class HistoryGapError(LoomError):
    """Events handed to a run do not continue what it has seen (a partial or skipped history).

    A run built from a partial history would miss WORKFLOW_STARTED and commit its initial
    state over the real one; refusing here is what makes that impossible, whoever calls.
    """

    def __init__(self, workflow_id: str, cursor: int, sequence: int) -> None:
        self.workflow_id = workflow_id
        self.cursor = cursor
        self.sequence = sequence
        start = "from its first event" if cursor == 0 else f"after {cursor}"
        super().__init__(
            f"workflow {workflow_id!r}: history must continue {start}, but the next event "
            f"given has sequence {sequence}; the run needs its full history"
        )


class _Nondeterminism(BaseException):
    """Unwinds workflow code after a replay mismatch; user code cannot catch it by accident."""


class _WorkflowLoop(asyncio.AbstractEventLoop):
    """A minimal event loop that runs callbacks only when the engine drives it.

    Wall-clock scheduling (`call_later`, `asyncio.sleep(n)`) is refused: it would make replay
    differ from the original run. Workflow code waits with `ctx.sleep` instead.
    """

    def __init__(self) -> None:
        # A list swapped out per round, not a deque: an empty deque allocates a 64-slot
        # block, and every parked run holds one of these loops.
        self._ready: list[asyncio.Handle] = []
        self.errors: list[BaseException] = []

    def run_until_quiet(self) -> None:
        previous = asyncio.events._get_running_loop()
        asyncio.events._set_running_loop(self)
        try:
            while self._ready:
                ready, self._ready = self._ready, []
                for index, handle in enumerate(ready):  # what these schedule runs next round
                    if handle.cancelled():
                        continue
                    try:
                        handle._run()
                    except BaseException:  # SystemExit and the like: keep what was not run
                        self._ready[:0] = ready[index + 1 :]
                        raise
        finally:
            asyncio.events._set_running_loop(previous)

    def call_soon(  # type: ignore[override]  # Handle typing differs across Python versions
        self,
        callback: Callable[..., object],
        *args: Any,
        context: contextvars.Context | None = None,
    ) -> asyncio.Handle:
        handle = asyncio.Handle(callback, args, self, context)
        self._ready.append(handle)
        return handle

    def call_later(  # type: ignore[override]  # refuses every call, whatever its arguments
        self, *args: Any, **kwargs: Any
    ) -> asyncio.TimerHandle:
        raise RuntimeError(
            "workflow code cannot use wall-clock timers (asyncio.sleep(n), asyncio.timeout, "
            "wait_for); use `await ctx.sleep(seconds)` or wait_for_signal(name, timeout=...)"
        )

    call_at = call_later  # type: ignore[assignment]

    def time(self) -> float:
        return 0.0

    def create_future(self) -> asyncio.Future[Any]:
        return asyncio.Future(loop=self)

    def create_task(self, coro: Any, *, name: str | None = None, context: Any = None) -> Any:
        return asyncio.Task(coro, loop=self, name=name, context=context)

    def get_debug(self) -> bool:
        return False

    def is_running(self) -> bool:
        return True

    def is_closed(self) -> bool:
        return False

    def call_exception_handler(self, context: dict[str, Any]) -> None:
        # Unretrieved results (e.g. a child nobody awaited when cancelled) are not failures;
        # an exception escaping a callback is.
        err = context.get("exception")
        message = str(context.get("message", ""))
        benign = "never retrieved" in message or "destroyed" in message
        if isinstance(err, BaseException) and not benign:
            self.errors.append(err)


@dataclass(slots=True)
class _Recorded:
    kind: EventKind
    key: str
    seq: int
    is_merge: bool = False
    """A STATE_UPDATE of `state.update(fn)` written before it replaced the state (no
    `removed` field): replaying it merges, as the code did when it was recorded."""


def _command_key(kind: EventKind, payload: Mapping[str, JSON]) -> str:
    if kind is EventKind.ACTIVITY_SCHEDULED:
        return f"{payload['name']}(args {payload['digest']})"
    if kind is EventKind.STATE_UPDATE:
        key = ",".join(sorted(payload["changes"]))
        removed = payload.get(REMOVED_KEYS)
        if removed:  # absent in histories written before keys could be removed
            key += " removed " + ",".join(removed)
        return key
    if kind is EventKind.STATE_PATCH:
        return ",".join(changed_keys(payload["patch"]))
    return str(payload.get("key", ""))


class WorkflowRun:
    """One workflow's live execution; feed it events with `apply`, collect `take_activation`."""

    # A worker keeps thousands of these parked: slots spare each its instance dict.
    __slots__ = (
        "_cancel_reason",
        "_cancelled",
        "_failure",
        "_has_snapshot",
        "_is_state_changed",
        "_is_state_refused",
        "_main",
        "_out",
        "_patch",
        "_pending",
        "_random",
        "_recorded",
        "_refusals",
        "_restart_input",
        "_seed",
        "_seq",
        "_shielded",
        "_signal_buffer",
        "_signal_waiters",
        "_state_bytes",
        "_unsaved_bytes",
        "compiled",
        "ctx",
        "cursor",
        "epoch",
        "input",
        "is_replaying",
        "limits",
        "loop",
        "now_ms",
        "pins",
        "registry",
        "replay_until",
        "started",
        "started_at_ms",
        "started_by",
        "state",
        "state_data",
        "step_index",
        "trace",
        "workflow_id",
    )

    def __init__(
        self,
        compiled: WorkflowDefinition[Any, Any],
        workflow_id: str,
        *,
        replay_until: int = 0,
        registry: Mapping[str, WorkflowDefinition[Any, Any]] | None = None,
        limits: Limits | None = None,
    ) -> None:
        from loom.context import WorkflowContext
        from loom.state import StateProxy

        self.limits = limits or Limits.from_env()
        self.compiled = compiled
        self.workflow_id = workflow_id
        self.registry = registry or {}
        self.loop = _WorkflowLoop()  # type: ignore[abstract]  # only what Tasks use is needed
        self.state_data: dict[str, JSON] = compiled.initial_state()
        for key, value in list(self.state_data.items()):
            self.state_data[key] = adopt(value, self, key)
        self.state = StateProxy(self, self.state_data)
        self.ctx: WorkflowContext[Any, Any] = WorkflowContext(self)
        self.epoch = 0
        self.cursor = 0
        self.replay_until = replay_until
        self.is_replaying = replay_until > 0
        self.now_ms = 0
        self._seed = 0
        self._random: random.Random | None = None
        """Made on first use (see `random`): 2.5 KiB of generator state per parked run."""
        self.input: JSON = None
        self.step_index = 0
        self.started = False
        self.started_by = ""
        """The source_hash of the code that started this run (from WORKFLOW_STARTED)."""
        self.started_at_ms = 0
        self.trace: JSON = None
        """The starter's trace context (from WORKFLOW_STARTED): every task's span joins it."""
        self.pins: dict[str, dict[str, JSON]] = {}
        self._seq = 0
        self._recorded: deque[_Recorded] = deque()
        self._pending: dict[int, tuple[asyncio.Future[Any], Callable[[JSON], Any]]] = {}
        self._signal_buffer: dict[str, deque[JSON]] = {}
        self._signal_waiters: dict[str, list[int]] = {}
        self._patch: list[tuple[str, dict[str, JSON]]] = []
        """In-place edits since the last command: (state field, JSON Patch op)."""
        self._cancel_reason: str | None = None
        self._cancelled = False
        self._shielded: set[int] = set()
        """Commands a cancel leaves running: a saga's compensations (see SHIELDED)."""
        self._main: asyncio.Task[None] | None = None
        self._out = Activation()
        self._failure: BaseException | None = None
        self._refusals: list[NewEvent] = []
        self._is_state_changed = False
        self._is_state_refused = False
        self._state_bytes: int | None = None
        """An upper bound of the state's encoded size (exact when last measured, plus the
        size of every change since), so the limit check does not encode it every step."""
        self._unsaved_bytes = 0
        """Size of the changes since the store last got the whole state (see
        STATE_SNAPSHOT_MIN_BYTES); None-sized runs (just built) hand it over at once."""
        self._has_snapshot = False
        self._restart_input: JSON = _MISSING

    @property
    def random(self) -> random.Random:
        """The run's deterministic generator, seeded from WORKFLOW_STARTED; made on first use."""
        if self._random is None:
            self._random = random.Random(self._seed)
        return self._random

    # -- feeding history ------------------------------------------------------------------

    def apply(self, events: Iterable[Event], *, include_commands: bool = True) -> None:
        """Deliver events in order; recorded commands are queued for matching first."""
        deliverable = []
        for event in events:
            if event.sequence != self.cursor + 1:
                raise HistoryGapError(self.workflow_id, self.cursor, event.sequence)
            if event.kind in COMMAND_KINDS:
                if include_commands:
                    self._recorded.append(
                        _Recorded(
                            event.kind,
                            _command_key(event.kind, event.payload),
                            int(event.payload["seq"]),
                            event.kind is EventKind.STATE_UPDATE
                            and REMOVED_KEYS not in event.payload,
                        )
                    )
            else:
                deliverable.append(event)
            self.cursor = event.sequence
        for index, event in enumerate(deliverable):
            if self.is_finished:
                self._carry(deliverable[index:])
                break
            self.is_replaying = event.sequence <= self.replay_until
            if not event.payload.get(REFUSED):
                self.now_ms = max(self.now_ms, event.created_at)
            self._deliver(event)
            self.loop.run_until_quiet()
            self._check_loop_errors()
        self._deliver_refusals()
        self.is_replaying = False
        if self._recorded and not self.is_finished and self._failure is None:
            head = self._recorded[0]
            self._fail_nondeterministic(head.seq, f"{head.kind} {head.key}", "no further command")

    def _deliver(self, event: Event) -> None:
        payload = event.payload
        kind = event.kind
        if kind is EventKind.WORKFLOW_STARTED:
            self._start(payload)
        elif kind is EventKind.ACTIVITY_COMPLETED:
            if isinstance(payload.get("pin"), dict):
                self.pins.setdefault(str(payload["name"]), payload["pin"])
            self._resolve(int(payload["seq"]), payload.get("result"))
        elif kind is EventKind.ACTIVITY_FAILED:
            error = payload["error"]
            details = error.get("details", {})
            self._reject(
                int(payload["seq"]),
                ActivityFailedError(
                    str(payload["name"]),
                    error["message"],
                    error_type=details.get("error_type", error["type"]),
                    attempt=int(payload.get("attempt", 1)),
                    retryable=bool(details.get("retryable", False)),
                ),
            )
        elif kind is EventKind.TIMER_FIRED:
            self._timer_fired(int(payload["seq"]))
        elif kind is EventKind.SIGNAL_RECEIVED:
            self._signal(str(payload["name"]), payload.get("payload"))
        elif kind is EventKind.CHILD_COMPLETED:
            self._resolve(int(payload["seq"]), payload["state"])
        elif kind is EventKind.CHILD_FAILED:
            error = payload["error"]
            self._reject(
                int(payload["seq"]),
                WorkflowExecutionError(
                    str(payload["workflow_id"]), error["type"], error["message"], error["details"]
                ),
            )
        elif kind is EventKind.CANCEL_REQUESTED:
            self._cancel(payload.get("reason"))

    def _start(self, payload: Mapping[str, JSON]) -> None:
        if self.started:
            return
        self.started = True
        self.started_by = str(payload.get("source_hash") or "")
        self.started_at_ms = self.now_ms
        self.trace = payload.get("trace")
        self.input = payload["input"]
        self._seed = int(payload["seed"])
        self._random = None
        snapshot = payload.get("snapshot")
        if isinstance(snapshot, dict):  # an epoch continued-as-new starts from its state
            self.state_data.clear()
            for key, value in snapshot.items():
                self.state_data[key] = adopt(value, self, key)
        self._main = self.loop.create_task(self._run_steps())

    async def _run_steps(self) -> None:
        instance = self.compiled.cls()
        try:
            for index, step in enumerate(self.compiled.steps):
                self.step_index = index
                self.issue(EventKind.STEP_STARTED, {"key": step.info.name})
                await step.method(instance, self.ctx)
            self._flush_patch()
        except _Nondeterminism:
            return
        except WorkflowCancelledError as err:
            self._close(WorkflowStatus.CANCELED, self.encode_error(err))
        except asyncio.CancelledError:
            cancelled = WorkflowCancelledError(self._cancel_reason)
            self._close(WorkflowStatus.CANCELED, self.encode_error(cancelled))
        except Exception as err:  # the workflow's own failure becomes its recorded outcome
            self._close(WorkflowStatus.FAILED, self.encode_error(err))
        else:
            if self._restart_input is _MISSING:
                self._close(WorkflowStatus.COMPLETED, None)
            else:
                self._begin_restart()

    def continue_as_new(self, input: JSON) -> None:
        """Once the code returns, replace the history by a new epoch that starts with
        `input` and the current state (see `Restart`); only with no command pending."""
        if self._pending:
            raise RuntimeError(
                f"workflow {self.workflow_id!r} cannot continue as new while "
                f"{len(self._pending)} command(s) wait for results"
            )
        self._restart_input = input

    def _begin_restart(self) -> None:
        carried = [
            NewEvent(EventKind.SIGNAL_RECEIVED, {"name": name, "payload": payload})
            for name, payloads in self._signal_buffer.items()
            for payload in payloads
        ]
        started: dict[str, JSON] = {
            "input": self._restart_input,
            "seed": self.random.getrandbits(63),
            "workflow_name": self.compiled.name,
            "workflow_version": self.compiled.version,
            "source_hash": self.compiled.source_hash,
            "snapshot": plain(self.state_data),
        }
        self._out.restart = Restart(started, carried)

    def _carry(self, undelivered: list[Event]) -> None:
        """Events a restarting run did not get to: they go into the new epoch, in order."""
        restart = self._out.restart
        if restart is not None:
            restart.carried.extend(
                NewEvent(event.kind, event.payload)
                for event in undelivered
                if event.kind in (EventKind.SIGNAL_RECEIVED, EventKind.CANCEL_REQUESTED)
            )

    def _close(self, status: WorkflowStatus, error: dict[str, JSON] | None) -> None:
        if self.is_finished:
            return
        out = self._out
        out.status = status
        out.error = error
        kind = {
            WorkflowStatus.COMPLETED: EventKind.WORKFLOW_COMPLETED,
            WorkflowStatus.FAILED: EventKind.WORKFLOW_FAILED,
            WorkflowStatus.CANCELED: EventKind.WORKFLOW_CANCELED,
        }[status]
        body: dict[str, JSON] = (
            {"state": plain(self.state_data)} if error is None else {"error": error}
        )
        out.events.append(NewEvent(kind, body))
        for seq in list(self._pending):
            out.cancel_task_keys.append(f"t:{self.workflow_id}:{seq}")
            out.cancel_task_keys.append(f"a:{self.workflow_id}:{seq}")

    # -- commands -------------------------------------------------------------------------

    def issue(
        self,
        kind: EventKind,
        payload: dict[str, JSON],
        decode: Callable[[JSON], Any] | None = None,
    ) -> tuple[int, asyncio.Future[Any] | None, bool]:
        """Record a command; returns (seq, future for its result, is_new).

        Replayed commands are checked against the history; new ones go into the activation.
        """
        if self._failure is not None:
            raise _Nondeterminism
        if kind not in STATE_KINDS:
            self._flush_patch()
        self._seq += 1
        seq = self._seq
        payload["seq"] = seq
        key = _command_key(kind, payload)
        is_new = not self._recorded
        if not is_new:
            recorded = self._recorded.popleft()
            if recorded.kind is not kind or recorded.key != key:
                self._fail_nondeterministic(seq, f"{recorded.kind} {recorded.key}", f"{kind} {key}")
                raise _Nondeterminism
        else:
            self._out.events.append(NewEvent(kind, payload))
            if kind in STATE_KINDS:
                self._is_state_changed = True
        future: asyncio.Future[Any] | None = None
        if decode is not None:
            future = self.loop.create_future()
            is_shielded = SHIELDED.get()
            if self._cancelled and not is_shielded:
                future.set_exception(WorkflowCancelledError(self._cancel_reason))
            else:
                self._pending[seq] = (future, decode)
                if is_shielded:
                    self._shielded.add(seq)
        return seq, future, is_new

    @property
    def is_recording(self) -> bool:
        """Whether the next command is new (recorded now), not one replayed from history.

        Limits are checked only for new commands: a replayed one was accepted (or its
        refusal recorded) under the limits of its time, so replay never depends on today's.
        """
        return not self._recorded

    def refuse(self, kind: EventKind, payload: dict[str, JSON]) -> None:
        """Record the failure of a new command that could not be carried out (e.g. arguments
        over a limit) as its result event, and deliver it like one.

        Delivery waits until the events being applied are all delivered, because that is
        where replay meets the recorded event: the code then sees the same order either way.
        """
        payload[REFUSED] = True
        event = NewEvent(kind, payload)
        self._out.events.append(event)
        self._refusals.append(event)

    def _deliver_refusals(self) -> None:
        self.is_replaying = False  # refusals come only from new commands
        while self._refusals and not self.is_finished:
            refused = self._refusals.pop(0)
            self._deliver(Event(self.cursor, refused.kind, refused.payload, self.now_ms))
            self.loop.run_until_quiet()
            self._check_loop_errors()
        self._refusals.clear()

    def add_task(self, spec: TaskSpec) -> None:
        self._out.tasks.append(spec)

    def add_child(self, child: ChildStart) -> None:
        self._out.children.append(child)

    @property
    def data(self) -> dict[str, JSON]:
        """The state the tracked containers report to (`loom._patch.PatchSink`)."""
        return self.state_data

    def note_patch(self, key: str, op: dict[str, JSON]) -> None:
        self._patch.append((key, op))

    def adopt(self, key: str, value: JSON) -> JSON:
        """`value` checked and copied into tracked containers, to become state field `key`."""
        if not isinstance(key, str):
            raise TypeError(f"state keys must be str, got {key!r}")
        if not is_json(value):
            raise StateSerializationError(key, value)
        return adopt(value, self, key)

    def _drop_patch(self, keys: Iterable[str]) -> None:
        """Forget edits of fields about to be recorded whole (their new value holds them)."""
        gone = set(keys)
        if self._patch and gone:
            self._patch = [entry for entry in self._patch if entry[0] not in gone]

    def add_message(self, message: Message) -> None:
        self._out.messages.append(message)

    def add_reply(self, reply: Reply) -> None:
        """Answer an `ask`, unless this is a replay of an event whose activation already
        committed (and with it the reply: the store writes both in one transaction)."""
        if not self.is_replaying:
            self._out.replies.append(reply)

    def record_state_set(self, key: str, value: JSON) -> None:
        self._drop_patch((key,))
        self.state_data[key] = adopt(value, self, key)
        self.issue(EventKind.STATE_SET, {"key": key, "value": plain(value)})

    def record_state_update(
        self, changes: dict[str, JSON], removed: Iterable[str] | None = None
    ) -> None:
        """One STATE_UPDATE: `changes` assigned and, for `state.update(fn)` (`removed` not
        None), the keys `fn` left out deleted.

        An update records `removed` (sorted, maybe empty); its replay key names removed
        keys only when there are some, so it is the key older events had. Replaying an
        older update (no `removed` field: it merged) merges again, so a workflow started
        before updates replaced the state finishes with the state it would have had.
        """
        gone = sorted(key for key in removed or () if key in self.state_data)
        gone = [key for key in gone if key not in changes]
        if gone and self._recorded and self._is_merged_update(bool(changes)):
            gone = []
        if not changes and not gone:
            return
        self._drop_patch([*gone, *changes])
        for key in gone:
            del self.state_data[key]
        recorded = {}
        for key, value in changes.items():
            self.state_data[key] = adopt(value, self, key)
            recorded[key] = plain(value)
        payload: dict[str, JSON] = {"changes": recorded}
        if removed is not None:
            payload[REMOVED_KEYS] = gone
        self.issue(EventKind.STATE_UPDATE, payload)

    def _is_merged_update(self, has_changes: bool) -> bool:
        """Whether the update being replayed was recorded when `update(fn)` merged.

        Its event has no `removed` field; and an update that only removes keys, which now
        always records an event, recorded none then, so the next recorded command is
        another one (merging changed nothing).
        """
        head = self._recorded[0]
        if head.kind is EventKind.STATE_UPDATE:
            return head.is_merge
        return not has_changes

    def _flush_patch(self) -> None:
        """Record the in-place edits of nested lists/dicts at a deterministic point.

        A history written before patches holds a whole-value STATE_UPDATE at this point;
        replaying it, the same fields' update is issued in its place (nothing is recorded).
        """
        if not self._patch:
            return
        ops = [op for _, op in self._patch]
        self._patch = []
        head = self._recorded[0] if self._recorded else None
        if head is not None and head.kind is EventKind.STATE_UPDATE:
            fields = {key: None for key in changed_keys(ops)}
            self.issue(EventKind.STATE_UPDATE, {"changes": fields})
        else:
            self.issue(EventKind.STATE_PATCH, {"patch": ops})

    def log(self, level: int, message: str) -> None:
        if self.is_replaying:
            return
        logger.log(
            level,
            "[%s] %s",
            self.workflow_id,
            message,
            extra={"workflow_id": self.workflow_id, "workflow_name": self.compiled.name},
        )
        self._out.logs.append((logging.getLevelName(level), message, self.now_ms))

    # -- resolution -----------------------------------------------------------------------

    def _resolve(self, seq: int, value: JSON) -> None:
        entry = self._pending.pop(seq, None)
        if entry is None:
            return
        future, decode = entry
        try:
            future.set_result(decode(value))
        except Exception as err:  # a result that no longer fits the annotated type
            future.set_exception(err)

    def _reject(self, seq: int, error: BaseException) -> None:
        entry = self._pending.pop(seq, None)
        if entry is not None:
            entry[0].set_exception(error)

    def _timer_fired(self, seq: int) -> None:
        for waiters in self._signal_waiters.values():
            if seq in waiters:
                waiters.remove(seq)
                self._reject(seq, TimeoutError(f"no signal arrived before the timeout (#{seq})"))
                return
        self._resolve(seq, None)

    def _signal(self, name: str, payload: JSON) -> None:
        waiters = self._signal_waiters.get(name)
        if waiters:
            seq = waiters.pop(0)
            self._out.cancel_task_keys.append(f"t:{self.workflow_id}:{seq}")
            self._resolve(seq, payload)
        else:
            self._signal_buffer.setdefault(name, deque()).append(payload)

    def wait_signal(self, seq: int, name: str) -> None:
        buffered = self._signal_buffer.get(name)
        if buffered:
            self._resolve(seq, buffered.popleft())
        elif seq in self._pending:
            self._signal_waiters.setdefault(name, []).append(seq)

    def _cancel(self, reason: JSON) -> None:
        if self._cancelled:
            return
        self._cancelled = True
        self._cancel_reason = None if reason is None else str(reason)
        was_waiting = bool(self._pending)
        for seq in list(self._pending):
            if seq in self._shielded:
                continue
            self._reject(seq, WorkflowCancelledError(self._cancel_reason))
            self._out.cancel_task_keys.append(f"t:{self.workflow_id}:{seq}")
        self._signal_waiters.clear()
        if self._main is not None and not was_waiting and not self._main.done():
            # Code blocked on something other than a command (e.g. a bare future): unwind it.
            self._main.cancel()

    # -- outcome --------------------------------------------------------------------------

    def _fail_nondeterministic(self, position: int, expected: str, actual: str) -> None:
        if self._failure is not None:
            return
        err = NonDeterministicWorkflowError(self.workflow_id, position, expected, actual)
        self._failure = err
        error = self.encode_error(err)
        self._out = Activation(
            events=[NewEvent(EventKind.WORKFLOW_FAILED, {"error": error})],
            status=WorkflowStatus.FAILED,
            error=error,
        )

    def _check_loop_errors(self) -> None:
        if self.loop.errors:
            err = self.loop.errors.pop(0)
            if self._failure is None and not isinstance(err, _Nondeterminism):
                self._close(WorkflowStatus.FAILED, self.encode_error(err))

    def encode_error(self, err: BaseException, **details: JSON) -> dict[str, JSON]:
        """`history.encode_error` with this run's `max_error_chars`."""
        return encode_error(err, max_chars=self.limits.max_error_chars, **details)

    @property
    def is_finished(self) -> bool:
        """Closed, failed, or continuing as new: no more events go to this run."""
        return (
            self._out.status is not WorkflowStatus.RUNNING
            or self._failure is not None
            or self._out.restart is not None
        )

    @property
    def pending_count(self) -> int:
        """Commands whose results the code still waits for."""
        return len(self._pending)

    @property
    def failure(self) -> BaseException | None:
        return self._failure

    def take_activation(self) -> Activation:
        """Hand over what the code produced since the last call.

        A state over `Limits.max_state_bytes` (at the end, or in any change recorded since
        the last call) is not handed over: the workflow fails instead, its history gets only
        the failure, and the state stays as the last activation left it.
        """
        changed = self._is_state_changed
        self._is_state_changed = False
        if changed and self._failure is None:
            oversized = self._oversized_state()
            if oversized is not None:
                self._refuse_state(oversized)
        out = self._out
        if self._is_state_refused:
            out.state = None
        elif self.is_finished:
            closing = out.events[-1].payload.get("state") if out.events else None
            out.state = closing if isinstance(closing, dict) else plain(self.state_data)
        elif changed and self._is_snapshot_due():
            out.state = self.state_data
        out.step_index = self.step_index
        out.source_hash = self.compiled.source_hash
        if not self.is_finished:
            self._out = Activation()
        return out

    def _is_snapshot_due(self) -> bool:
        """Whether the store gets the whole state with this activation (else the changes'
        events alone carry it; readers fold them into the last snapshot)."""
        size = self._state_bytes or 0
        if self._has_snapshot and self._unsaved_bytes < max(STATE_SNAPSHOT_MIN_BYTES, size):
            return False
        self._has_snapshot = True
        self._unsaved_bytes = 0
        return True

    def _oversized_state(self) -> PayloadTooLargeError | None:
        limits = self.limits
        limit = limits.max_state_bytes
        growth = 0
        for event in self._out.events:
            if event.kind in STATE_KINDS:
                payload = event.payload
                body = payload.get("changes", payload.get("value", payload.get("patch")))
                size = encoded_size(body)
                if size > limit:
                    what = f"a change of the state of workflow {self.workflow_id!r}"
                    return PayloadTooLargeError(
                        what=what, size=size, limit=limit, field="max_state_bytes"
                    )
                # A change grows the encoded state by at most its value, key and framing.
                growth += size + len(str(payload.get("key", ""))) + 8
        self._unsaved_bytes += growth
        if self._state_bytes is not None and self._state_bytes + growth <= limit:
            self._state_bytes += growth
            return None
        self._state_bytes = encoded_size(self.state_data)
        if self._state_bytes > limit:
            what = f"state of workflow {self.workflow_id!r}"
            return PayloadTooLargeError(
                what=what, size=self._state_bytes, limit=limit, field="max_state_bytes"
            )
        return None

    def _refuse_state(self, err: PayloadTooLargeError) -> None:
        """Fail the workflow in place of this activation; the stored state stays as the
        last committed activation left it (its events are not written)."""
        error = self.encode_error(err)
        self._out = Activation(
            events=[NewEvent(EventKind.WORKFLOW_FAILED, {"error": error})],
            logs=self._out.logs,
            status=WorkflowStatus.FAILED,
            error=error,
        )
        self._is_state_refused = True

    def close(self) -> None:
        """Drop the coroutines of an evicted run without running more workflow code."""
        if self._main is not None and not self._main.done():
            coro = self._main.get_coro()
            if hasattr(coro, "close"):
                with contextlib.suppress(RuntimeError, _Nondeterminism, LoomError):
                    coro.close()
        self._pending.clear()
        # No workflow code runs after this: drop the run's edges to what points back at it
        # (its context and logger, the state proxy, tracked state values), so refcounting
        # frees it as soon as the worker lets go. Left to the cyclic collector, every
        # finished run was ~29 objects of garbage that counted toward the next collection;
        # a burst of 10,000 paid for them in many more, dearer ones (bench/burst.py).
        self.state_data = {}
        with contextlib.suppress(AttributeError):  # closed before
            del self.ctx, self.state


_MISSING: Any = object()
"""No continue-as-new input yet (None is a valid input)."""


def now_ms() -> int:
    return int(time.time() * 1000)


def decode_error(error: Mapping[str, JSON], workflow_id: str) -> BaseException:
    """Rebuild the typed error a handle raises from its `{type, message, details}` record."""
    kind = str(error.get("type"))
    message = str(error.get("message"))
    details: dict[str, JSON] = dict(error.get("details") or {})
    if kind == "ActivityFailedError":
        return ActivityFailedError(
            str(details.get("activity_name", "?")),
            message,
            error_type=str(details.get("error_type", "Exception")),
            retryable=bool(details.get("retryable", False)),
        )
    if kind == "NonDeterministicWorkflowError":
        return NonDeterministicWorkflowError(
            workflow_id, 0, str(details.get("expected")), str(details.get("actual"))
        )
    if kind == "WorkflowCancelledError":
        return CancelledWorkflowError(message.removeprefix("workflow cancelled: "))
    return WorkflowExecutionError(workflow_id, kind, message, details)
