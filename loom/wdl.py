"""Declarative workflows: a JSON definition, validated by pydantic models, run by an
interpreter that is itself an ordinary deterministic workflow.

Every step becomes ordinary commands (activities, children, signal waits, timers), so crash
recovery, replay, suspension and progress work for definitions unchanged. Registered
definitions live in the store (`register`, `resolve`, `pinned`): immutable versions, and a
workflow runs the exact version it started with (its source hash is the sha256's head).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from activity_registry import RegistryError
from activity_registry.registry import parse_spec
from activity_registry.schema import SchemaValidator, check_schema
from loom._expression import (
    ExpressionError,
    check_expression,
    evaluate_condition,
    render,
    template_expressions,
)
from loom._json import JSON, dumps, type_adapter
from loom.activity import declared_activity
from loom.context import WorkflowContext
from loom.definition import StepDefinition, StepInfo, compiled_workflow, declare_compiled
from loom.exceptions import (
    ActivityFailedError,
    LoomError,
    WorkflowCancelledError,
    WorkflowDefinitionError,
)
from loom.saga import Saga
from loom.store import Store
from loom.workflow import CompiledWorkflow, Workflow, WorkflowInfo

__all__ = [
    "ActivityStep",
    "ChildStep",
    "CompiledDefinition",
    "ConditionStep",
    "Definition",
    "ExpressionError",
    "InvalidDefinitionError",
    "ParallelStep",
    "SleepStep",
    "StepTimeoutError",
    "WaitStep",
    "json_schema",
    "load",
    "mermaid",
    "pinned",
    "register",
    "resolve",
    "validate",
]

SCHEMA_PATH = Path(__file__).with_name("wdl_schema.json")
_IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_]*$"
_STEP_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"
_RESERVED = frozenset({"input"})
"""Variable names taken by the interpreter: `input` is the whole workflow input."""


# -- the definition's models ------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class RetrySpec(_Model):
    """Re-run a failed activity call (with its own retry policy) up to `max_attempts` times."""

    max_attempts: int = Field(3, ge=1, le=100)
    initial_interval_ms: int = Field(1000, ge=0)
    backoff: float = Field(2.0, ge=1.0)
    max_interval_ms: int = Field(60_000, ge=0)

    def delay_ms(self, attempt: int) -> int:
        return int(
            min(self.initial_interval_ms * self.backoff ** (attempt - 1), self.max_interval_ms)
        )


class CompensationSpec(_Model):
    """The undo of a completed activity step; its input may use the step's output."""

    activity: str
    input: JSON = None


class _Step(_Model):
    id: str = Field(pattern=_STEP_ID, description="Unique in the definition; the progress step.")
    description: str = ""


def _retry_shorthand(schema: dict[str, Any]) -> None:
    """The schema says what `_retry_count` accepts: `"retry": 3` means three attempts."""
    count = {"type": "integer", "minimum": 1, "maximum": 100, "description": "max_attempts"}
    schema["properties"]["retry"]["anyOf"].insert(0, count)


class ActivityStep(_Step):
    """Run an activity: a native name or a registered `name@range` (WASM)."""

    model_config = ConfigDict(json_schema_extra=_retry_shorthand)
    type: Literal["activity"]
    activity: str
    input: JSON = None
    output: str | None = Field(None, pattern=_IDENTIFIER)
    retry: RetrySpec | None = None
    timeout: int | None = Field(None, gt=0, description="Milliseconds for the whole step.")
    compensation: CompensationSpec | None = None

    @field_validator("retry", mode="before")
    @classmethod
    def _retry_count(cls, value: Any) -> Any:
        return {"max_attempts": value} if isinstance(value, int) else value


class ChildStep(_Step):
    """Start a child workflow by name (a Python workflow or another definition), await it."""

    type: Literal["agent", "workflow"]
    workflow: str | None = Field(None, description="Name of the child workflow.")
    agent: str | None = Field(None, description="Name of the child (agent) workflow.")
    input: JSON = None
    output: str | None = Field(None, pattern=_IDENTIFIER)

    @property
    def child_name(self) -> str:
        return self.workflow or self.agent or ""


class ParallelStep(_Step):
    """Run branches (lists of steps) at once; fails once all settled if any failed."""

    type: Literal["parallel"]
    branches: list[list[Step]] = Field(min_length=1)


class ConditionStep(_Step):
    """`if` (a bare CEL expression yielding true/false) chooses `then` or `else`."""

    type: Literal["condition"]
    if_: str = Field(alias="if", min_length=1)
    then: list[Step] = Field(default_factory=list)
    else_: list[Step] = Field(default_factory=list, alias="else")


class WaitStep(_Step):
    """Wait for signal `event`; `timeout` ms fails the workflow unless on_timeout=continue."""

    type: Literal["wait"]
    event: str = Field(min_length=1)
    timeout: int | None = Field(None, gt=0)
    output: str | None = Field(None, pattern=_IDENTIFIER)
    on_timeout: Literal["fail", "continue"] = "fail"


class SleepStep(_Step):
    """A durable timer of `duration` ms (a number or a template yielding one)."""

    type: Literal["sleep"]
    duration: int | str


Step = Annotated[
    ActivityStep | ChildStep | ParallelStep | ConditionStep | WaitStep | SleepStep,
    Field(discriminator="type"),
]


class Definition(_Model):
    """A declarative workflow: `name`, `version`, optional `input_schema`, `steps`."""

    schema_ref: str | None = Field(
        None, alias="$schema", description="Where editors find this schema; ignored by Loom."
    )
    name: str = Field(min_length=1, max_length=200)
    version: str = Field("1.0.0", pattern=r"^\d+\.\d+\.\d+([-+][0-9A-Za-z.-]+)?$")
    description: str = ""
    agent: str | None = None
    input_schema: dict[str, Any] | None = None
    steps: list[Step] = Field(min_length=1)


ParallelStep.model_rebuild()
ConditionStep.model_rebuild()
Definition.model_rebuild()


def json_schema() -> dict[str, Any]:
    """The JSON Schema of definitions (what the package ships as `loom/wdl_schema.json`)."""
    schema = Definition.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Loom workflow definition"
    return schema


# -- validation -------------------------------------------------------------------------


class InvalidDefinitionError(WorkflowDefinitionError):
    """A workflow definition breaks the schema or a rule; `problems` lists each one, naming
    the step id and field."""

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = list(problems)
        listed = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"workflow definition {source} is invalid:\n{listed}")


def validate(document: Mapping[str, Any], *, source: str = "<dict>") -> Definition:
    """Validate a definition document; raises InvalidDefinitionError listing every problem."""
    try:
        definition = Definition.model_validate(document)
    except ValidationError as err:
        raise InvalidDefinitionError(source, _schema_problems(document, err)) from None
    problems = _rule_problems(definition)
    if problems:
        raise InvalidDefinitionError(source, problems)
    return definition


def _schema_problems(document: Mapping[str, Any], err: ValidationError) -> list[str]:
    problems = []
    for item in err.errors():
        step_id, field = _locate(document, item["loc"])
        if item["type"] in ("union_tag_invalid", "union_tag_not_found"):
            field = "type"
        place = f"step {step_id!r} field {field!r}" if step_id else f"field {field!r}"
        problems.append(f"{place}: {item['msg']}")
    return problems


def _locate(document: Any, loc: tuple[int | str, ...]) -> tuple[str | None, str]:
    """Walk a pydantic error location through the raw document: the innermost step's id
    and the field path inside it (discriminator tags in `loc` are skipped)."""
    node, step_id, field = document, None, []
    is_tag_next = False
    for part in loc:
        if is_tag_next and isinstance(node, dict) and part == node.get("type"):
            is_tag_next = False
            continue  # the union's tag, not a key of the document
        is_tag_next = False
        is_key = isinstance(node, dict) and part in node
        is_index = isinstance(node, list) and isinstance(part, int) and part < len(node)
        if not (is_key or is_index):
            field.append(str(part))
            node = None
            continue
        node = node[part]
        field.append(str(part))
        if isinstance(node, dict) and "type" in node and isinstance(part, int):
            is_tag_next = True
            if isinstance(node.get("id"), str):
                step_id, field = node["id"], []
    return step_id, ".".join(field) or "(step)"


def _rule_problems(definition: Definition) -> list[str]:
    problems: list[str] = []
    seen: set[str] = set()
    if definition.input_schema is not None:
        try:
            check_schema(definition.input_schema)
        except ValueError as err:
            problems.append(f"field 'input_schema': {err}")
    for step in walk(definition.steps):
        where = f"step {step.id!r}"
        if step.id in seen:
            problems.append(f"{where} field 'id': step ids must be unique, {step.id!r} repeats")
        seen.add(step.id)
        output = getattr(step, "output", None)
        if output in _RESERVED:
            problems.append(f"{where} field 'output': {output!r} is reserved (the workflow input)")
        problems.extend(_step_problems(step, where))
    return problems


def _step_problems(step: Any, where: str) -> list[str]:
    problems = []
    if isinstance(step, ActivityStep):
        for name, field in [(step.activity, "activity")] + (
            [(step.compensation.activity, "compensation.activity")] if step.compensation else []
        ):
            try:
                parse_spec(name)
            except ValueError as err:
                problems.append(f"{where} field {field!r}: {err}")
    if isinstance(step, ChildStep) and bool(step.workflow) == bool(step.agent):
        problems.append(f"{where} field 'workflow': give exactly one of 'workflow' or 'agent'")
    if isinstance(step, ConditionStep):
        try:
            check_expression(step.if_, where=f"{where} field 'if'")
        except ExpressionError as err:
            problems.append(str(err))
    for field in ("input", "duration"):
        value = getattr(step, field, None)
        problems.extend(_template_problems(value, f"{where} field {field!r}"))
    if isinstance(step, ActivityStep) and step.compensation is not None:
        problems.extend(
            _template_problems(step.compensation.input, f"{where} field 'compensation.input'")
        )
    return problems


def _template_problems(value: JSON, where: str) -> list[str]:
    problems = []
    for expression, inner in template_expressions(value):
        try:
            check_expression(expression, where=f"{where}{inner}")
        except ExpressionError as err:
            problems.append(str(err))
    return problems


def walk(steps: Sequence[Any]) -> list[Any]:
    """Every step of a step list, depth first (branches and both arms of conditions)."""
    found: list[Any] = []
    for step in steps:
        found.append(step)
        if isinstance(step, ParallelStep):
            for branch in step.branches:
                found.extend(walk(branch))
        elif isinstance(step, ConditionStep):
            found.extend(walk(step.then))
            found.extend(walk(step.else_))
    return found


# -- loading ----------------------------------------------------------------------------


def read_document(path_or_dict: str | os.PathLike[str] | Mapping[str, Any]) -> tuple[Any, str]:
    """The raw JSON document and a name for it in messages."""
    if isinstance(path_or_dict, Mapping):
        return dict(path_or_dict), "<dict>"
    path = Path(path_or_dict)
    try:
        text = path.read_text()
    except OSError as err:
        raise InvalidDefinitionError(str(path), [f"cannot read it: {err.strerror}"]) from err
    try:
        return json.loads(text), str(path)
    except json.JSONDecodeError as err:
        where = f"line {err.lineno} column {err.colno}"
        raise InvalidDefinitionError(str(path), [f"not JSON ({where}): {err.msg}"]) from err


@dataclass(eq=False)
class CompiledDefinition(CompiledWorkflow[dict[str, Any], dict[str, Any]]):
    """A loaded definition: an ordinary CompiledWorkflow, plus the definition and its sha256.

    `source_hash` is the first 16 hex digits of `sha256` (the canonical JSON of the document),
    so a changed definition is a changed code version, as for a changed Python class.
    """

    definition: Definition = None  # type: ignore[assignment]  # always given by load()
    sha256: str = ""
    _input_validator: SchemaValidator | None = None

    def encode_input(self, value: object) -> JSON:
        encoded = super().encode_input(value)
        if self._input_validator is not None:
            try:
                self._input_validator.validate(encoded)
            except RegistryError as err:  # SchemaViolationError: the input_schema said no
                raise TypeError(f"input for workflow {self.name!r}: {err}") from err
        return encoded


def load(path_or_dict: str | os.PathLike[str] | Mapping[str, Any]) -> CompiledDefinition:
    """Validate a definition (a JSON file's path or the parsed document) and compile it.

    The result is a `CompiledWorkflow`: give it to `loom.Worker(workflows=[...])`, start it
    with `await compiled.start(input)`, run it locally with `await compiled.execute(input)`.
    Raises InvalidDefinitionError listing every problem (step id and field).
    """
    document, source = read_document(path_or_dict)
    if not isinstance(document, dict):
        raise InvalidDefinitionError(source, ["the document must be a JSON object"])
    definition = validate(document, source=source)
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"))
    sha256 = hashlib.sha256(canonical.encode()).hexdigest()
    cls = _workflow_class(definition)
    adapter = type_adapter(dict[str, Any])
    schema = definition.input_schema
    compiled = CompiledDefinition(
        cls=cls,
        name=definition.name,
        version=definition.version,
        description=definition.description,
        agent=definition.agent,
        steps=tuple(
            StepDefinition(StepInfo(step.id, step.description or _summary(step)), _method(step))
            for step in definition.steps
        ),
        input_type=dict[str, Any],
        state_type=dict[str, Any],
        source_hash=sha256[:16],
        _input=adapter,
        _state=adapter,
        _initial_state={},
        definition=definition,
        sha256=sha256,
        _input_validator=None if schema is None else SchemaValidator(schema, direction="input"),
    )
    cls.__loom_info__ = WorkflowInfo(
        definition.name, definition.version, definition.description, definition.agent
    )
    cls.__loom_compiled__ = compiled
    declare_compiled(compiled)
    return compiled


# -- stored definitions -----------------------------------------------------------------


async def register(
    store: Store, path_or_dict: str | os.PathLike[str] | Mapping[str, Any]
) -> tuple[CompiledDefinition, bool]:
    """Validate and store a definition version; (compiled, False) when this exact version is
    stored already. Raises InvalidDefinitionError, or DefinitionConflictError when the version
    exists with other content (versions are immutable)."""
    compiled = load(path_or_dict)
    document, _ = read_document(path_or_dict)
    created = await store.register_definition(
        compiled.name, compiled.version, compiled.sha256, document
    )
    return compiled, created


async def resolve(store: Store, spec: str) -> CompiledDefinition:
    """The stored definition `NAME[@RANGE]` names (the highest version in range; the latest
    registered for a bare name), compiled. Raises WorkflowDefinitionError naming what is
    registered when nothing matches."""
    from activity_registry import VersionRange

    name, _, version_range = spec.strip().partition("@")
    versions = [record.version for record in await store.list_definitions(name)]
    if not versions:
        raise WorkflowDefinitionError(
            f"no definition named {name!r} is registered in this database (register one with "
            "`loom wdl register FILE`; a Python workflow is started with --app MODULE)"
        )
    try:
        chosen = VersionRange.parse(version_range).best(versions) if version_range else None
    except ValueError as err:
        raise WorkflowDefinitionError(f"invalid version range in {spec!r}: {err}") from err
    if version_range and chosen is None:
        raise WorkflowDefinitionError(
            f"no version of {name!r} satisfies {version_range!r}; registered: "
            + ", ".join(versions)
        )
    record = await store.get_definition(name, version=chosen)
    assert record is not None  # listed above; versions are never deleted
    return _compiled(record.document, f"{name} {record.version}")


_PINNED: dict[tuple[str, str], CompiledDefinition] = {}
"""Compiled stored versions by (name, source hash). Versions are immutable and addressed by
their content, so one compiled once stays right for every store and every later call."""


async def pinned(store: Store, name: str, source_hash: str) -> CompiledDefinition | None:
    """The stored version a workflow started with (its source hash, or the whole sha256),
    compiled once per process; None when no such version is registered here."""
    key = (name, source_hash[:16])
    compiled = _PINNED.get(key)
    if compiled is None:
        record = await store.get_definition(name, sha256_prefix=key[1])
        if record is None:
            return None
        compiled = _PINNED[key] = _compiled(record.document, f"{name} {record.version}")
    return compiled


def _compiled(document: JSON, source: str) -> CompiledDefinition:
    if not isinstance(document, dict):
        raise InvalidDefinitionError(source, ["the stored document is not a JSON object"])
    return load(document)


def _summary(step: Any) -> str:
    if isinstance(step, ActivityStep):
        return f"running {step.activity}"
    if isinstance(step, ChildStep):
        return f"running {step.child_name}"
    if isinstance(step, WaitStep):
        return f"waiting for {step.event}"
    return {"parallel": "running branches", "condition": "deciding", "sleep": "sleeping"}[step.type]


# -- the interpreter --------------------------------------------------------------------


class StepTimeoutError(LoomError):
    """A step ran past its `timeout` (an activity step, or a wait with no signal in time)."""

    def __init__(self, step_id: str, timeout_ms: int, what: str) -> None:
        self.step_id = step_id
        self.timeout_ms = timeout_ms
        super().__init__(
            f"step {step_id!r} timed out after {timeout_ms} ms ({what}); raise the step's "
            f'timeout, or for a wait set "on_timeout": "continue"'
        )


class DefinitionWorkflow(Workflow[dict[str, Any], dict[str, Any]]):
    """Base of the class each loaded definition gets; one instance per run holds the
    variables (input and step outputs) and the definition's saga."""

    definition: ClassVar[Definition]

    def __init__(self) -> None:
        self.interpreter: _Interpreter | None = None


def _workflow_class(definition: Definition) -> type[DefinitionWorkflow]:
    name = "Definition_" + re.sub(r"\W", "_", definition.name)
    return type(name, (DefinitionWorkflow,), {"definition": definition})


def _method(step: Any) -> Any:
    async def run_step(self: DefinitionWorkflow, ctx: WorkflowContext[Any, Any]) -> None:
        if self.interpreter is None:
            self.interpreter = _Interpreter(ctx)
        await self.interpreter.run_top(step)

    return run_step


class _Interpreter:
    """Turns steps into commands on `ctx`; replay re-derives the same variables."""

    def __init__(self, ctx: WorkflowContext[Any, Any]) -> None:
        self.ctx = ctx
        data = ctx.input
        self.variables: dict[str, JSON] = {**data, "input": data}
        self.saga = Saga(ctx)

    async def run_top(self, step: Any) -> None:
        try:
            await self.run(step)
        except (Exception, WorkflowCancelledError) as err:
            await self.saga.unwind(err)  # compensations of completed steps, newest first
            raise

    async def run_all(self, steps: Sequence[Any]) -> None:
        for step in steps:
            await self.run(step)

    async def run(self, step: Any) -> None:
        if isinstance(step, ActivityStep):
            await self._activity(step)
        elif isinstance(step, ChildStep):
            await self._child(step)
        elif isinstance(step, ParallelStep):
            await self._parallel(step)
        elif isinstance(step, ConditionStep):
            where = f"step {step.id!r} field 'if'"
            chosen = (
                step.then
                if evaluate_condition(step.if_, self.variables, where=where)
                else step.else_
            )
            await self.run_all(chosen)
        elif isinstance(step, WaitStep):
            await self._wait(step)
        else:
            await self._sleep(step)

    def _render(self, step: Any, value: JSON, field: str) -> JSON:
        return render(value, self.variables, where=f"step {step.id!r} field {field!r}")

    def _set(self, name: str | None, value: JSON) -> None:
        if name is not None:
            self.variables[name] = value
            self.ctx.state[name] = value

    async def _activity(self, step: ActivityStep) -> None:
        value = self._render(step, step.input, "input")
        retry = step.retry or RetrySpec(max_attempts=1)
        attempt = 1
        while True:
            try:
                result = await self._call(step, value)
                break
            except ActivityFailedError as err:
                if attempt >= retry.max_attempts or not err.retryable:
                    raise
                await self.ctx.sleep(retry.delay_ms(attempt) / 1000)
                attempt += 1
        self._set(step.output, result)
        if step.compensation is not None:
            undo = self._render(step, step.compensation.input, "compensation.input")
            self.saga.compensate(*_call_arguments(step.compensation.activity, undo))

    async def _call(self, step: ActivityStep, value: JSON) -> JSON:
        call = self.ctx.activity(*_call_arguments(step.activity, value))
        if step.timeout is None:
            return await call
        running = asyncio.ensure_future(call)
        timer = asyncio.ensure_future(self.ctx.sleep(step.timeout / 1000))
        await asyncio.wait({running, timer}, return_when=asyncio.FIRST_COMPLETED)
        if running.done():
            return running.result()
        raise StepTimeoutError(step.id, step.timeout, f"activity {step.activity!r} still running")

    async def _child(self, step: ChildStep) -> None:
        compiled = compiled_workflow(step.child_name)
        value = self._render(step, step.input, "input")
        child = self.ctx.start_workflow(
            compiled, value if value is not None else {}, workflow_id=f"{self.ctx.id}/{step.id}"
        )
        state = await child
        self._set(step.output, type_adapter(compiled.state_type).dump_python(state, mode="json"))

    async def _parallel(self, step: ParallelStep) -> None:
        # Every branch settles before the step fails, so compensations never race a branch.
        outcomes = await asyncio.gather(
            *(self.run_all(branch) for branch in step.branches), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    async def _wait(self, step: WaitStep) -> None:
        timeout = None if step.timeout is None else step.timeout / 1000
        try:
            payload = await self.ctx.wait_for_signal(step.event, timeout=timeout)
        except TimeoutError:
            if step.on_timeout == "fail":
                what = f"no {step.event!r} signal arrived"
                raise StepTimeoutError(step.id, step.timeout or 0, what) from None
            payload = None
        self._set(step.output, payload)

    async def _sleep(self, step: SleepStep) -> None:
        duration = self._render(step, step.duration, "duration")
        if isinstance(duration, bool) or not isinstance(duration, int | float) or duration < 0:
            raise ExpressionError(
                str(step.duration),
                f"must yield a number of milliseconds >= 0, got {dumps(duration)}",
                where=f"step {step.id!r} field 'duration'",
            )
        await self.ctx.sleep(duration / 1000)


def _call_arguments(spec: str, value: JSON) -> tuple[Any, ...]:
    """How a definition calls an activity: a registered `name@range` or an object input by
    name with one JSON input; a native activity with a non-object input positionally."""
    native = None if "@" in spec else declared_activity(spec)
    if native is not None and not isinstance(value, dict):
        return (native, value) if value is not None else (native,)
    return (spec, value) if value is not None else (spec,)


# -- the graph --------------------------------------------------------------------------


def mermaid(definition: Definition | CompiledDefinition) -> str:
    """The definition's steps as a Mermaid flowchart (compensations as dotted edges)."""
    if isinstance(definition, CompiledDefinition):
        definition = definition.definition
    graph = _Graph()
    start = graph.node("start", ("([", "])"))
    tails = graph.draw(definition.steps, [start])
    graph.link(tails, graph.node("end", ("([", "])")))
    return "\n".join(["flowchart TD", *graph.lines, *graph.edges]) + "\n"


_BOX = ("[", "]")


class _Graph:
    """Mermaid text: nodes `n1..nN` (ids need no escaping), labels quoted."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.edges: list[str] = []

    def node(self, label: str, shape: tuple[str, str] = _BOX) -> str:
        name = f"n{len(self.lines) + 1}"
        text = label.replace('"', "#quot;")
        self.lines.append(f'    {name}{shape[0]}"{text}"{shape[1]}')
        return name

    def link(self, tails: list[str], head: str, label: str = "") -> None:
        arrow = f"-->|{label}|" if label else "-->"
        self.edges.extend(f"    {tail} {arrow} {head}" for tail in tails)

    def draw(self, steps: Sequence[Any], tails: list[str], label: str = "") -> list[str]:
        for step in steps:
            tails = self.draw_step(step, tails, label)
            label = ""
        return tails

    def draw_step(self, step: Any, tails: list[str], label: str) -> list[str]:
        if isinstance(step, ParallelStep):
            fork = self.node(f"{step.id}: parallel", ("[[", "]]"))
            self.link(tails, fork, label)
            ends = [end for branch in step.branches for end in self.draw(branch, [fork])]
            join = self.node(f"{step.id}: joined", ("((", "))"))
            self.link(ends, join)
            return [join]
        if isinstance(step, ConditionStep):
            decide = self.node(f"{step.id}: {step.if_}", ("{", "}"))
            self.link(tails, decide, label)
            then = self.draw(step.then, [decide], "true") if step.then else [decide]
            other = self.draw(step.else_, [decide], "false") if step.else_ else [decide]
            return then + other
        shape = ("[/", "/]") if isinstance(step, WaitStep) else _BOX
        head = self.node(f"{step.id}: {_summary(step)}", shape)
        self.link(tails, head, label)
        if isinstance(step, ActivityStep) and step.compensation is not None:
            undo = self.node(f"undo: {step.compensation.activity}", ("[", "]"))
            self.edges.append(f"    {head} -.->|on failure| {undo}")
        return [head]
