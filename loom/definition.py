"""What the engine needs of a workflow: its validated definition, found by name.

`loom.workflow` builds these from classes (`CompiledWorkflow` adds `start` and `execute`);
the runtime (replay, client, in-process runs) reads only this, so it imports nothing of the
user API above it.
"""

from __future__ import annotations

import typing
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pydantic import TypeAdapter, ValidationError

from loom._json import JSON, dumps, loads

if TYPE_CHECKING:
    from loom.workflow import Workflow

InT = TypeVar("InT")
StateT = TypeVar("StateT")


@dataclass(frozen=True, slots=True)
class StepInfo:
    """Name and human description of one step (shown in progress)."""

    name: str
    description: str


@dataclass(frozen=True, slots=True)
class StepDefinition:
    info: StepInfo
    method: Callable[..., Awaitable[None]]


@dataclass(eq=False)
class WorkflowDefinition(Generic[InT, StateT]):
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
                f"input for workflow {self.name!r} must be {type_name(self.input_type)}; "
                f"got {type(value).__name__}: {first_errors(err)}"
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


_by_name: dict[str, WorkflowDefinition[Any, Any]] = {}


def declare_compiled(compiled: WorkflowDefinition[Any, Any]) -> None:
    """Make a workflow known by name in this process (`Workflow.compile()` does it for
    classes, `loom.wdl.load` for definitions), so children and local runs find it."""
    _by_name[compiled.name] = compiled


def compiled_workflow(name: str) -> WorkflowDefinition[Any, Any]:
    """The compiled workflow declared under `name` in this process."""
    try:
        return _by_name[name]
    except KeyError:
        known = ", ".join(sorted(_by_name)) or "none"
        raise LookupError(
            f"no workflow named {name!r} is defined in this process (defined: {known}); "
            f"import the module that declares it"
        ) from None


def type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or repr(tp)


def first_errors(err: ValidationError) -> str:
    parts = []
    for item in err.errors()[:3]:
        location = ".".join(str(p) for p in item["loc"]) or "value"
        parts.append(f"{location}: {item['msg']}")
    return "; ".join(parts)
