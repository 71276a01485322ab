"""The user API: `@workflow`, `@step`, `Workflow[In, State]` and `CompiledWorkflow`.

Reaches the engine only through `loom.client` (durable start) and `loom._local` (a run in
this process); what the engine needs of a workflow is its `WorkflowDefinition`.
"""

from __future__ import annotations

import hashlib
import inspect
import typing
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar, overload

from pydantic import TypeAdapter

from loom._json import JSON, dict_model_defaults, dumps, is_dict_model, loads, type_adapter
from loom._local import execute_locally
from loom.client import start_workflow
from loom.definition import (
    StepDefinition,
    StepInfo,
    WorkflowDefinition,
    compiled_workflow,
    declare_compiled,
    type_name,
)
from loom.exceptions import WorkflowDefinitionError

__all__ = [
    "CompiledWorkflow",
    "Input",
    "State",
    "StepInfo",
    "Workflow",
    "compiled_workflow",
    "step",
    "workflow",
]

if TYPE_CHECKING:
    from loom.client import WorkflowHandle

InT = TypeVar("InT")
StateT = TypeVar("StateT")
W = TypeVar("W", bound="type[Workflow[Any, Any]]")
F = TypeVar("F", bound=Callable[..., Awaitable[None]])

_STEP_ATTR = "__loom_step__"
_DEFAULT_VERSION = "1.0.0"


@dataclass(frozen=True, slots=True)
class WorkflowInfo:
    name: str
    version: str
    description: str
    agent: str | None


@overload
def step(fn: F, /) -> F: ...


@overload
def step(*, name: str | None = None, description: str = "") -> Callable[[F], F]: ...


def step(
    fn: F | None = None, /, *, name: str | None = None, description: str = ""
) -> F | Callable[[F], F]:
    """Mark an `async def step(self, ctx)` method as a workflow step; steps run in order."""

    def mark(method: F) -> F:
        if not inspect.iscoroutinefunction(method):
            raise WorkflowDefinitionError(
                f"step {method.__qualname__} must be an `async def` method taking (self, ctx)"
            )
        setattr(method, _STEP_ATTR, StepInfo(name or method.__name__, description))
        return typing.cast(F, method)

    return mark(fn) if fn is not None else mark


@overload
def workflow(cls: W, /) -> W: ...


@overload
def workflow(
    *,
    name: str | None = None,
    version: str = _DEFAULT_VERSION,
    description: str = "",
    agent: str | None = None,
) -> Callable[[W], W]: ...


def workflow(
    cls: W | None = None,
    /,
    *,
    name: str | None = None,
    version: str = _DEFAULT_VERSION,
    description: str = "",
    agent: str | None = None,
) -> W | Callable[[W], W]:
    """Declare a `Workflow[In, State]` subclass; compiles it at once so mistakes surface here.

    `agent` names the persona used in progress messages ("Robin is charging the card").
    """

    def declare(klass: W) -> W:
        if not (isinstance(klass, type) and issubclass(klass, Workflow)):
            raise WorkflowDefinitionError(
                f"@workflow decorates subclasses of loom.Workflow[In, State], got {klass!r}"
            )
        klass.__loom_info__ = WorkflowInfo(
            name or klass.__name__, version, description or (klass.__doc__ or "").strip(), agent
        )
        klass.__loom_compiled__ = None
        klass.compile()
        return klass

    return declare(cls) if cls is not None else declare


class _DictFields(dict[str, Any]):
    """A dict whose keys also read as attributes (`value.score` is `value["score"]`)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # A class-level default would shadow the key on attribute reads (`state.total` would
        # stay 0): defaults move to `__loom_defaults__`, which `dict_model_defaults` reads.
        super().__init_subclass__(**kwargs)
        defaults: dict[str, Any] = {}
        for key in vars(cls).get("__annotations__", {}):
            if key in vars(cls):
                defaults[key] = vars(cls)[key]
                delattr(cls, key)
        setattr(cls, "__loom_defaults__", defaults)  # noqa: B010  # a name mypy cannot see

    def __getattr__(self, key: str) -> Any:
        if key.startswith("__"):  # copy, pickle and pydantic probe dunders: never keys
            raise AttributeError(key)
        try:
            return self[key]
        except KeyError:
            raise AttributeError(
                f"{type(self).__name__} has no key {key!r} (keys: {', '.join(self) or 'none'})"
            ) from None


class Input(_DictFields):
    """Base of a dict-style workflow input, as in loom-core (`class OrderInput(loom.Input)`).

    A plain `dict`: annotated keys are validated when present (class-level values are
    defaults); `ctx.input["order_id"]` and `ctx.input.order_id` both read them. A
    dataclass or pydantic model works too.
    """


class State(_DictFields):
    """Base of a dict-style workflow State, as in loom-core (`class QuizState(loom.State)`).

    Annotated keys are validated when present and class-level values are the initial
    state; `handle.result()` returns an instance of the class (a `dict` whose keys also
    read as attributes). In workflow code `ctx.state` offers attribute and dict access.
    """


class Workflow(Generic[InT, StateT]):
    """Base class of workflows: subclass as `Workflow[MyInput, MyState]` and add `@step`s."""

    __loom_info__: ClassVar[WorkflowInfo | None] = None
    __loom_compiled__: ClassVar[CompiledWorkflow[Any, Any] | None] = None

    @classmethod
    def compile(cls) -> CompiledWorkflow[InT, StateT]:
        """Validate the definition and return the compiled workflow (cached per class)."""
        compiled = cls.__dict__.get("__loom_compiled__")
        if compiled is None:
            compiled = _compile(cls)
            cls.__loom_compiled__ = compiled
            declare_compiled(compiled)
        return typing.cast("CompiledWorkflow[InT, StateT]", compiled)

    @classmethod
    async def start(
        cls, input: InT, *, workflow_id: str | None = None, owner: str | None = None
    ) -> WorkflowHandle[StateT]:
        """Start durably (see `CompiledWorkflow.start`)."""
        return await cls.compile().start(input, workflow_id=workflow_id, owner=owner)


@dataclass(eq=False)
class CompiledWorkflow(WorkflowDefinition[InT, StateT]):
    """A validated workflow, and the two ways to run it: durably or in this process."""

    async def execute(
        self, input: InT, *, signals: Mapping[str, JSON | list[JSON]] | None = None
    ) -> StateT:
        """Run to completion in this process with no database; returns the final State.

        Activities run inline, timers complete at once (time is simulated), and
        `wait_for_signal(name)` takes payloads from `signals` (a list for repeated waits);
        waiting for a signal that was not supplied raises instead of hanging.
        """
        state: StateT = await execute_locally(self, input, signals=signals or {})
        return state

    async def start(
        self, input: InT, *, workflow_id: str | None = None, owner: str | None = None
    ) -> WorkflowHandle[StateT]:
        """Persist a new workflow and return its handle; a worker runs it.

        `workflow_id` is an idempotency key: starting the same id again returns the
        existing workflow's handle. An input over `Limits.max_input_bytes` raises
        PayloadTooLargeError before anything is written.
        """
        return await start_workflow(self, input, workflow_id=workflow_id, owner=owner)


def _compile(cls: type[Workflow[Any, Any]]) -> CompiledWorkflow[Any, Any]:
    info = cls.__dict__.get("__loom_info__") or WorkflowInfo(
        cls.__name__, _DEFAULT_VERSION, (cls.__doc__ or "").strip(), None
    )
    steps = _collect_steps(cls)
    input_type, state_type = _type_arguments(cls)
    state_adapter = type_adapter(state_type)
    return CompiledWorkflow(
        cls=cls,
        name=info.name,
        version=info.version,
        description=info.description,
        agent=info.agent,
        steps=steps,
        input_type=input_type,
        state_type=state_type,
        source_hash=_source_hash(cls),
        _input=type_adapter(input_type),
        _state=state_adapter,
        _initial_state=_initial_state(cls, state_type, state_adapter),
    )


def _collect_steps(cls: type) -> tuple[StepDefinition, ...]:
    seen: dict[str, StepDefinition] = {}
    for klass in reversed(cls.__mro__):
        for attr, value in vars(klass).items():
            info = getattr(value, _STEP_ATTR, None)
            if not isinstance(info, StepInfo):
                continue
            if info.name in seen and seen[info.name].method.__name__ != attr:
                raise WorkflowDefinitionError(
                    f"workflow {cls.__name__}: two steps are named {info.name!r}; "
                    f"step names must be unique"
                )
            seen[info.name] = StepDefinition(info, value)
    if not seen:
        raise WorkflowDefinitionError(
            f"workflow {cls.__name__} has no steps; mark at least one async method with @loom.step"
        )
    return tuple(seen.values())


def _type_arguments(cls: type) -> tuple[Any, Any]:
    for klass in cls.__mro__:
        for base in getattr(klass, "__orig_bases__", ()):
            origin = typing.get_origin(base)
            args = typing.get_args(base)
            if any(isinstance(a, TypeVar) for a in args):
                continue
            if origin is Workflow and len(args) == 2:
                return args[0], args[1]
            if isinstance(origin, type) and issubclass(origin, Workflow) and len(args) == 1:
                return dict[str, Any], args[0]  # a one-parameter base: `loom.Actor[State]`
    return dict[str, Any], dict[str, Any]


def _initial_state(cls: type, state_type: Any, adapter: TypeAdapter[Any]) -> dict[str, JSON]:
    if typing.is_typeddict(state_type) or typing.get_origin(state_type) is dict:
        return {}
    if state_type is dict:
        return {}
    if is_dict_model(state_type):
        defaults = dict_model_defaults(state_type)
        try:
            return dict(loads(dumps(defaults)))
        except (TypeError, ValueError) as err:
            raise WorkflowDefinitionError(
                f"workflow {cls.__name__}: the defaults of State {type_name(state_type)} "
                f"must be JSON values: {err}"
            ) from err
    try:
        default = state_type()
    except TypeError as err:
        raise WorkflowDefinitionError(
            f"workflow {cls.__name__}: State type {type_name(state_type)} must be constructible "
            f"with no arguments (give every field a default): {err}"
        ) from err
    dumped = adapter.dump_python(default, mode="json")
    if not isinstance(dumped, dict):
        raise WorkflowDefinitionError(
            f"workflow {cls.__name__}: State must serialise to a JSON object, "
            f"got {type(dumped).__name__}"
        )
    return dumped


def _source_hash(cls: type) -> str:
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        source = cls.__qualname__
    return hashlib.sha256(source.encode()).hexdigest()[:16]
