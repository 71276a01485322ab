"""`WorkflowContext`: the only door from workflow code to time, randomness and effects.

Every method turns into a command on the owning run, so replay sees the same sequence.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Generator, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from loom import mailbox
from loom._json import JSON, dumps, is_json, loads, measured_digest, type_adapter
from loom.activation import ACTIVITY_TASK, TIMER_TASK, ChildStart, Message, Reply, TaskSpec
from loom.activity import Activity
from loom.definition import WorkflowDefinition
from loom.exceptions import PayloadTooLargeError
from loom.history import EventKind
from loom.llm import DEFAULT_MODEL_ACTIVITY, run_llm
from loom.saga import Saga
from loom.state import StateProxy
from loom.usage import TOKEN_KINDS

if TYPE_CHECKING:
    from loom.replay import WorkflowRun
    from loom.workflow import Workflow

LLM_USAGE_KEYS = (*TOKEN_KINDS, "calls")
InT = TypeVar("InT")
StateT = TypeVar("StateT")
R = TypeVar("R")
ChildIn = TypeVar("ChildIn")
ChildState = TypeVar("ChildState")


class WorkflowLogger:
    """`ctx.logger`: writes to the workflow's log (and Python logging), silent during replay."""

    __slots__ = ("_run",)

    def __init__(self, run: WorkflowRun) -> None:
        self._run = run

    def debug(self, message: str, *args: object) -> None:
        self._run.log(logging.DEBUG, message % args if args else message)

    def info(self, message: str, *args: object) -> None:
        self._run.log(logging.INFO, message % args if args else message)

    def warning(self, message: str, *args: object) -> None:
        self._run.log(logging.WARNING, message % args if args else message)

    def error(self, message: str, *args: object) -> None:
        self._run.log(logging.ERROR, message % args if args else message)


class ChildWorkflow(Generic[ChildState]):
    """A started child workflow; `await` it for the child's final State."""

    def __init__(self, workflow_id: str, future: Any) -> None:
        self.workflow_id = workflow_id
        self._future = future

    def __await__(self) -> Generator[Any, None, ChildState]:
        result: ChildState = yield from self._future.__await__()
        return result


def _seconds(duration: float | int | timedelta) -> float:
    seconds = duration.total_seconds() if isinstance(duration, timedelta) else float(duration)
    if seconds < 0:
        raise ValueError(f"duration must be >= 0, got {duration!r}")
    return seconds


class WorkflowContext(Generic[InT, StateT]):
    """What a step receives: input, state, logger and the durable operations.

    Annotate it `WorkflowContext[In, State]`; the one-parameter form `WorkflowContext[State]`
    of loom-core is accepted too (the input is then untyped).
    """

    def __class_getitem__(cls, params: Any) -> Any:
        # Runtime only: annotations are not used to type `ctx`, so one parameter is `[Any, S]`.
        if not isinstance(params, tuple):
            params = (Any, params)
        return super().__class_getitem__(params)  # type: ignore[misc]  # Generic's hook

    def __init__(self, run: WorkflowRun) -> None:
        self._run = run
        self._input: Any = _UNSET
        self.logger = WorkflowLogger(run)
        self._llm_usage: dict[str, int] = dict.fromkeys(LLM_USAGE_KEYS, 0)

    @property
    def workflow_id(self) -> str:
        return self._run.workflow_id

    @property
    def id(self) -> str:
        """Alias of `workflow_id` (the loom-core spelling)."""
        return self._run.workflow_id

    @property
    def input(self) -> InT:
        """The typed workflow input."""
        if self._input is _UNSET:
            self._input = self._run.compiled.decode_input(self._run.input)
        return self._input  # type: ignore[no-any-return]  # typed by the compiled workflow

    @property
    def state(self) -> StateProxy:
        return self._run.state

    @property
    def is_replaying(self) -> bool:
        return self._run.is_replaying

    def now(self) -> datetime:
        """Deterministic current time: when the event being processed was recorded."""
        return datetime.fromtimestamp(self._run.now_ms / 1000, tz=UTC)

    def random(self) -> float:
        """Deterministic random float in [0, 1), seeded per workflow."""
        return self._run.random.random()

    def uuid4(self) -> uuid.UUID:
        """Deterministic UUID4, seeded per workflow."""
        return uuid.UUID(int=self._run.random.getrandbits(128), version=4)

    @overload
    async def activity(self, fn: Activity[..., R], /, *args: Any, **kwargs: Any) -> R: ...

    @overload
    async def activity(
        self, fn: str, input: JSON = None, /, *, result_type: type[R] | None = None
    ) -> Any: ...

    async def activity(self, fn: Activity[..., Any] | str, /, *args: Any, **kwargs: Any) -> Any:
        """Run an activity durably and return its result.

        `fn` is an `@loom.activity` function (called with its own arguments) or a registered
        name with an optional semver range, e.g. `"summarize@^1"`, called with one JSON input
        (`result_type=` validates the output into a pydantic model or dataclass).
        """
        run = self._run
        if isinstance(fn, Activity):
            name = fn.name
            arguments = fn.encode_arguments(args, kwargs)
            decode = fn.decode_result
        elif isinstance(fn, str):
            name, arguments, decode = _by_name(fn, args, kwargs)
        else:
            raise TypeError(
                f"ctx.activity takes an @loom.activity function or a registered name, got {fn!r}"
            )
        if not is_json(arguments):
            raise TypeError(f"activity {name!r}: arguments must be JSON-serialisable")
        key, size = measured_digest(arguments)
        limit = run.limits.max_args_bytes
        if size > limit and run.is_recording:
            return await self._refuse_activity(name, key, decode, size, limit)
        payload: dict[str, JSON] = {"name": name, "digest": key, "input": arguments}
        seq, future, is_new = run.issue(EventKind.ACTIVITY_SCHEDULED, payload, decode)
        if is_new:
            task_payload: dict[str, JSON] = {
                "workflow_id": run.workflow_id,
                "seq": seq,
                "name": name,
                "input": arguments,
                "pin": run.pins.get(name),
                "as_of": run.now_ms,  # a registered version resolves as of the workflow's clock
            }
            run.add_task(TaskSpec(f"a:{run.workflow_id}:{seq}", ACTIVITY_TASK, task_payload, 0))
        assert future is not None
        return await future

    async def _refuse_activity(
        self, name: str, key: str, decode: Callable[[JSON], Any], size: int, limit: int
    ) -> Any:
        """Arguments over `max_args_bytes`: the call is recorded (digest and size, not the
        arguments) together with its non-retryable failure, and no task is created.

        The refusal is history, not a bare exception, so replay reads the outcome instead of
        re-checking it against the limits in force then: a worker with other limits, or a
        limit raised since, replays the same commands. The code sees ActivityFailedError
        (error_type PayloadTooLargeError), like any activity that failed for good.
        """
        run = self._run
        payload: dict[str, JSON] = {"name": name, "digest": key, "input": None, "size": size}
        seq, future, _ = run.issue(EventKind.ACTIVITY_SCHEDULED, payload, decode)
        err = PayloadTooLargeError(
            what=f"argument payload of activity {name!r}",
            size=size,
            limit=limit,
            field="max_args_bytes",
        )
        error = run.encode_error(err, error_type=type(err).__name__, retryable=False)
        error["details"]["activity_name"] = name
        run.refuse(
            EventKind.ACTIVITY_FAILED,
            {"seq": seq, "name": name, "error": error, "attempt": 0},
        )
        assert future is not None
        return await future

    async def llm(
        self,
        prompt: str | Sequence[dict[str, JSON]],
        /,
        *,
        activity: str = DEFAULT_MODEL_ACTIVITY,
        tools: Sequence[Activity[..., Any] | str] = (),
        output: Any = None,
        max_turns: int = 8,
        repair_attempts: int = 2,
        **params: JSON,
    ) -> Any:
        """Ask a model, letting it call `tools`, and return its final answer; durable.

        `prompt` is a string (one user message) or a list of `{role, content}` messages.
        Each model call is the activity `activity` (`openai-chat@^1`, `anthropic-chat@^1` or
        any with their input and output); `params` (`max_tokens`, `temperature`, `model`…) go
        to each call. `tools` are registered specs (`"web-fetch@^1"`: name, description and
        input schema from the registry) or `@loom.activity` functions. A tool call's
        arguments are checked against the tool's input schema; a violation, an unknown tool
        or a tool that failed for good goes back to the model as that tool's error. Tools run
        as ordinary activities (WASM under their own grants). With `output` (a pydantic
        model, dataclass, TypedDict or a JSON Schema dict) the answer is parsed and
        validated, sent back for repair up to `repair_attempts` times, and returned as that
        type; else the answer's text. Raises `loom.LLMOutputError` when no acceptable answer
        comes within `max_turns` model calls. Replay reads every answer from history.
        """
        return await run_llm(
            self,
            prompt,
            activity=activity,
            tools=tools,
            output=output,
            max_turns=max_turns,
            repair_attempts=repair_attempts,
            params=params,
            totals=self._llm_usage,
        )

    @property
    def llm_usage(self) -> dict[str, int]:
        """Tokens of this run's `ctx.llm` model calls so far: `prompt_tokens`,
        `completion_tokens`, `total_tokens` and `calls`, summed from recorded results (so
        replay-safe). Cost is not here: it is priced by the worker (`loom inspect`)."""
        return dict(self._llm_usage)

    def saga(self, *, parallel: bool = False) -> Saga:
        """A saga: `async with ctx.saga() as saga:` then `saga.compensate(undo, *args)` after
        each step that succeeded.

        If the block raises (or the workflow is cancelled inside it), the compensations run
        newest first as durable activities, one after another (each finishing its retries)
        or all together with `parallel=True`; then the exception propagates, or
        `loom.CompensationError` if a compensation failed. A cancel requested while they
        run waits for them.
        """
        return Saga(self, parallel=parallel)

    async def sleep(
        self,
        duration: float | int | timedelta | None = None,
        /,
        *,
        delta: timedelta | float | int | None = None,
        until: datetime | None = None,
    ) -> None:
        """Durable timer: survives restarts.

        Give exactly one of `duration` (seconds or a timedelta), `delta=` (the loom-core
        spelling of the same) or `until=` (a datetime). `until` is measured against the
        workflow's clock `ctx.now()`, never the host's, so replay waits the same; a naive
        datetime is taken as UTC (the zone of `ctx.now()`), and a time already past fires
        at once.
        """
        run = self._run
        given = [value for value in (duration, delta, until) if value is not None]
        if len(given) != 1:
            raise TypeError(
                "ctx.sleep() takes exactly one of a duration, delta= or until=, e.g. "
                "ctx.sleep(30), ctx.sleep(delta=timedelta(hours=1)), ctx.sleep(until=when)"
            )
        if until is not None:
            if not isinstance(until, datetime):
                raise TypeError(f"ctx.sleep(until=) takes a datetime, got {until!r}")
            aware = until if until.tzinfo is not None else until.replace(tzinfo=UTC)
            fire_at = max(run.now_ms, int(aware.timestamp() * 1000))
        else:
            span = duration if duration is not None else delta
            assert span is not None  # exactly one was given, and it was not `until`
            fire_at = run.now_ms + int(_seconds(span) * 1000)
        seq, future, is_new = run.issue(
            EventKind.TIMER_STARTED, {"key": "timer", "fire_at": fire_at}, _ignore
        )
        if is_new:
            run.add_task(TaskSpec(f"t:{run.workflow_id}:{seq}", TIMER_TASK, {"seq": seq}, fire_at))
        assert future is not None
        await future

    async def wait_for_signal(
        self, name: str, timeout: float | int | timedelta | None = None
    ) -> Any:
        """Wait for the next signal `name` (signals sent earlier are buffered).

        Returns the payload; raises TimeoutError when `timeout` passes first.
        """
        run = self._run
        payload: dict[str, JSON] = {"key": name}
        if timeout is not None:
            payload["fire_at"] = run.now_ms + int(_seconds(timeout) * 1000)
        seq, future, is_new = run.issue(EventKind.SIGNAL_WAIT_STARTED, payload, _identity)
        if is_new and timeout is not None:
            run.add_task(
                TaskSpec(
                    f"t:{run.workflow_id}:{seq}", TIMER_TASK, {"seq": seq}, int(payload["fire_at"])
                )
            )
        run.wait_signal(seq, name)
        assert future is not None
        return await future

    async def wait_until_signal(
        self, name: str, timeout: float | int | timedelta | None = None
    ) -> Any:
        """Alias of `wait_for_signal` (the loom-core spelling)."""
        return await self.wait_for_signal(name, timeout)

    def start_workflow(
        self,
        workflow: type[Workflow[ChildIn, ChildState]] | WorkflowDefinition[ChildIn, ChildState],
        input: ChildIn,
        *,
        workflow_id: str | None = None,
    ) -> ChildWorkflow[ChildState]:
        """Start a child workflow; `await` the returned object for its final State.

        A failed child raises WorkflowExecutionError in the parent at that await.
        """
        run = self._run
        compiled = workflow if isinstance(workflow, WorkflowDefinition) else workflow.compile()
        encoded = compiled.encode_input(input)
        child_id = workflow_id or f"{run.workflow_id}/{run.ctx.uuid4().hex[:12]}"
        refusal = None
        if run.is_recording:  # see _refuse_activity: a refusal is recorded, not re-checked
            try:
                what = f"input of child workflow {child_id!r} ({compiled.name})"
                run.limits.check(what, encoded, "max_input_bytes")
            except PayloadTooLargeError as err:
                refusal = err
        seq, future, is_new = run.issue(
            EventKind.CHILD_STARTED,
            {"key": compiled.name, "workflow_id": child_id},
            compiled.decode_state,
        )
        if refusal is not None:
            error = run.encode_error(refusal)
            run.refuse(
                EventKind.CHILD_FAILED, {"seq": seq, "workflow_id": child_id, "error": error}
            )
            run.random.getrandbits(63)  # the seed a started child takes, to stay aligned
        elif is_new:
            run.add_child(
                ChildStart(
                    workflow_id=child_id,
                    workflow_name=compiled.name,
                    workflow_version=compiled.version,
                    input=encoded,
                    state=compiled.initial_state(),
                    source_hash=compiled.source_hash,
                    total_steps=len(compiled.steps),
                    parent_seq=seq,
                    seed=run.random.getrandbits(63),
                )
            )
        else:
            run.random.getrandbits(63)  # keep the random stream aligned with the first run
        return ChildWorkflow(child_id, future)

    def send(self, actor: Any, key: str, handler: str, payload: JSON = None) -> None:
        """Send a message to actor (`actor`, `key`), creating it if absent; fire-and-forget.

        `actor` is an `@loom.actor` class or its type name. Durable and exactly once: the
        message is committed with this workflow task (a recorded command, so replay never
        sends it again).
        """
        self._send(actor, key, handler, payload, None)

    async def ask(
        self,
        actor: Any,
        key: str,
        handler: str,
        payload: JSON = None,
        *,
        timeout: float | int | timedelta | None = None,
    ) -> Any:
        """Send a message and wait for the handler's return value (durably: a restart
        keeps waiting). The handler's exception is raised here as ActorHandlerError;
        TimeoutError when `timeout` passes first."""
        run = self._run
        target = mailbox.actor_id(actor, key)
        if target == run.workflow_id:
            raise ValueError(
                f"actor {target!r} cannot ask itself: it handles one message at a time, so "
                "the reply could never come; call the handler's code directly"
            )
        reply_id = self.uuid4().hex
        signal = mailbox.REPLY_SIGNAL + reply_id
        self._send(
            actor,
            key,
            handler,
            payload,
            {"reply_id": reply_id, "workflow_id": run.workflow_id, "signal": signal},
        )
        body = await self.wait_for_signal(signal, timeout)
        return mailbox.reply_value(body)

    def _send(
        self, actor: Any, key: str, handler: str, payload: JSON, reply: dict[str, JSON] | None
    ) -> None:
        run = self._run
        start = mailbox.actor_start(actor, key)
        body = mailbox.message(actor, handler, payload, reply)
        if run.is_recording:
            run.limits.check(f"message to actor {start.workflow_id!r}", body, "max_signal_bytes")
        _, _, is_new = run.issue(EventKind.MESSAGE_SENT, {"key": f"{start.workflow_id} {handler}"})
        if is_new:
            run.add_message(Message(start, body))

    def _answer(self, message: JSON, body: dict[str, JSON]) -> None:
        """Reply to the `ask` that sent `message` (a mailbox signal); nothing for a send."""
        reply = message.get("reply") if isinstance(message, dict) else None
        if isinstance(reply, dict):
            workflow_id = reply.get("workflow_id")
            signal = reply.get("signal")
            self._run.add_reply(
                Reply(
                    str(reply["reply_id"]),
                    {"actor": self._run.workflow_id, **body},
                    None if workflow_id is None else str(workflow_id),
                    None if signal is None else str(signal),
                )
            )

    @property
    def _is_quiet(self) -> bool:
        """No command waits for a result (continue-as-new is possible)."""
        return self._run.pending_count == 0

    def _continue_as_new(self, input: JSON) -> None:
        """Start a new epoch from the current state once the code returns (compaction)."""
        self._run.continue_as_new(input)


def _by_name(spec: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, JSON, Any]:
    result_type = kwargs.pop("result_type", None)
    if kwargs or len(args) > 1:
        raise TypeError(
            f"activity {spec!r} called by name takes one JSON input, e.g. "
            f"ctx.activity({spec!r}, {{...}}); got {len(args)} positional and "
            f"{sorted(kwargs)} keyword arguments"
        )
    decode: Callable[[JSON], Any] = _identity
    if result_type is not None:
        decode = type_adapter(result_type).validate_python
    value = args[0] if args else None
    if not is_json(value):
        raise TypeError(f"activity {spec!r}: input must be JSON-serialisable, got {value!r}")
    return spec, loads(dumps(value)), decode


def _identity(value: JSON) -> JSON:
    return value


def _ignore(value: JSON) -> None:
    return None


_UNSET: Any = object()
