"""The user API: `@workflow`, `@step`, `Workflow[In, State]` and `CompiledWorkflow`.

Reaches the engine only through `loom.client` (durable start) and `loom.replay` (local run).
"""

from __future__ import annotations

import hashlib
import inspect
import typing
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar, overload

from pydantic import TypeAdapter, ValidationError

from loom._json import JSON, dict_model_defaults, dumps, is_dict_model, loads, type_adapter
from loom.exceptions import WorkflowDefinitionError

if TYPE_CHECKING:
    from loom.client import WorkflowHandle

InT = TypeVar("InT")
StateT = TypeVar("StateT")
W = TypeVar("W", bound="type[Workflow[Any, Any]]")
F = TypeVar("F", bound=Callable[..., Awaitable[None]])

_STEP_ATTR = "__loom_step__"
_compiled_by_name: dict[str, CompiledWorkflow[Any, Any]] = {}
_DEFAULT_VERSION = "1.0.0"


@dataclass(frozen=True, slots=True)
class StepInfo:
    """Name and human description of one step (shown in progress)."""

    name: str
    description: str


@dataclass(frozen=True, slots=True)
class StepDefinition:
    info: StepInfo
    method: Callable[..., Awaitable[None]]


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
            _compiled_by_name[compiled.name] = compiled
        return typing.cast("CompiledWorkflow[InT, StateT]", compiled)

    @classmethod
    async def start(
        cls, input: InT, *, workflow_id: str | None = None, owner: str | None = None
    ) -> WorkflowHandle[StateT]:
        """Start durably (see `CompiledWorkflow.start`)."""
        return await cls.compile().start(input, workflow_id=workflow_id, owner=owner)


@dataclass(eq=False)
class CompiledWorkflow(Generic[InT, StateT]):
    """A validated workflow: step table, type adapters and source hash, prepared once."""

    cls: type[Workflow[InT, StateT]]
    name: str
    version: str
    description: str
    agent: str | None
    steps: tuple[StepDefinition, ...]
    input_type: Any
    state_type: Any
    source_hash: str
    _input: TypeAdapter[Any] = field(repr=False)
    _state: TypeAdapter[Any] = field(repr=False)
    _initial_state: dict[str, JSON] = field(repr=False)

    def encode_input(self, value: object) -> JSON:
        """Validate `value` against the input type and serialise it to JSON."""
        try:
            typed = self._input.validate_python(value)
            return self._input.dump_python(typed, mode="json")
        except ValidationError as err:
            raise TypeError(
                f"input for workflow {self.name!r} must be {_type_name(self.input_type)}; "
                f"got {type(value).__name__}: {_first_errors(err)}"
            ) from err

    def decode_input(self, value: JSON) -> InT:
        return typing.cast(InT, self._input.validate_python(value))

    def initial_state(self) -> dict[str, JSON]:
        """A deep copy: a `field(default_factory=list)` default edited in place by one run
        must not be what the next run of this workflow starts with."""
        return dict(loads(dumps(self._initial_state)))

    def decode_state(self, value: Mapping[str, JSON]) -> StateT:
        """Build the typed State from its JSON form."""
        return typing.cast(StateT, self._state.validate_python(dict(value)))

    def step_names(self) -> list[str]:
        return [s.info.name for s in self.steps]

    async def execute(
        self, input: InT, *, signals: Mapping[str, JSON | list[JSON]] | None = None
    ) -> StateT:
        """Run to completion in this process with no database; returns the final State.

        Activities run inline, timers complete at once (time is simulated), and
        `wait_for_signal(name)` takes payloads from `signals` (a list for repeated waits);
        waiting for a signal that was not supplied raises instead of hanging.
        """
        from loom.replay import execute_locally

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
        from loom.client import start_workflow

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
            if typing.get_origin(base) is Workflow:
                args = typing.get_args(base)
                if len(args) == 2 and not any(isinstance(a, TypeVar) for a in args):
                    return args[0], args[1]
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
                f"workflow {cls.__name__}: the defaults of State {_type_name(state_type)} "
                f"must be JSON values: {err}"
            ) from err
    try:
        default = state_type()
    except TypeError as err:
        raise WorkflowDefinitionError(
            f"workflow {cls.__name__}: State type {_type_name(state_type)} must be constructible "
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


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or repr(tp)


def _first_errors(err: ValidationError) -> str:
    parts = []
    for item in err.errors()[:3]:
        location = ".".join(str(p) for p in item["loc"]) or "value"
        parts.append(f"{location}: {item['msg']}")
    return "; ".join(parts)


def declare_compiled(compiled: CompiledWorkflow[Any, Any]) -> None:
    """Make a workflow built without a class body (a loaded definition) known by name, as
    `@workflow` does for classes, so children and local runs find it."""
    _compiled_by_name[compiled.name] = compiled


def compiled_workflow(name: str) -> CompiledWorkflow[Any, Any]:
    """The compiled workflow declared under `name` in this process."""
    try:
        return _compiled_by_name[name]
    except KeyError:
        known = ", ".join(sorted(_compiled_by_name)) or "none"
        raise LookupError(
            f"no workflow named {name!r} is defined in this process (defined: {known}); "
            f"import the module that declares it"
        ) from None
