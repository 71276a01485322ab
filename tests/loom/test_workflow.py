"""Definition-time rules, typed input/state handling and local execution."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from pydantic import BaseModel

import loom


class Input(BaseModel):
    name: str


class State(BaseModel):
    greeting: str = ""
    count: int = 0


@loom.activity
async def greet(name: str) -> str:
    return f"hello {name}"


@loom.workflow(name="Greeter")
class Greeter(loom.Workflow[Input, State]):
    @loom.step
    async def hello(self, ctx: loom.WorkflowContext[Input, State]) -> None:
        ctx.state.greeting = await ctx.activity(greet, ctx.input.name)
        ctx.state["count"] = ctx.state.get("count", 0) + 1


async def test_pydantic_input_and_state() -> None:
    state = await Greeter.compile().execute(Input(name="ann"))
    assert state == State(greeting="hello ann", count=1)


async def test_dict_input_is_validated_into_the_input_type() -> None:
    state = await Greeter.compile().execute({"name": "bo"})  # type: ignore[arg-type]
    assert state.greeting == "hello bo"


async def test_wrong_input_type_is_a_clear_error() -> None:
    with pytest.raises(TypeError, match=r"input for workflow 'Greeter' must be Input.*name"):
        await Greeter.compile().execute({"nom": "x"})  # type: ignore[arg-type]


def test_workflow_without_steps_is_refused() -> None:
    with pytest.raises(loom.WorkflowDefinitionError, match="has no steps"):

        @loom.workflow
        class Empty(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
            pass


def test_sync_step_is_refused() -> None:
    with pytest.raises(loom.WorkflowDefinitionError, match="must be an `async def`"):

        class Bad(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
            @loom.step
            def sync(self, ctx):  # type: ignore[no-untyped-def]
                pass


def test_duplicate_step_names_are_refused() -> None:
    with pytest.raises(loom.WorkflowDefinitionError, match="two steps are named 'same'"):

        @loom.workflow
        class Twice(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
            @loom.step(name="same")
            async def one(self, ctx):  # type: ignore[no-untyped-def]
                pass

            @loom.step(name="same")
            async def two(self, ctx):  # type: ignore[no-untyped-def]
                pass


def test_state_type_needs_defaults() -> None:
    @dataclass
    class Strict:
        required: int

    with pytest.raises(loom.WorkflowDefinitionError, match="constructible with no arguments"):

        @loom.workflow
        class NoDefaults(loom.Workflow[dict, Strict]):  # type: ignore[type-arg]
            @loom.step
            async def only(self, ctx):  # type: ignore[no-untyped-def]
                pass


def test_sync_activity_is_refused() -> None:
    with pytest.raises(loom.WorkflowDefinitionError, match="async def"):

        @loom.activity
        def blocking() -> None:  # type: ignore[type-var]
            pass


def test_compile_is_cached_and_hashes_source() -> None:
    compiled = Greeter.compile()
    assert compiled is Greeter.compile()
    assert len(compiled.source_hash) == 16
    assert compiled.step_names() == ["hello"]


@loom.workflow(name="BadState")
class BadState(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
    @loom.step
    async def assign(self, ctx):  # type: ignore[no-untyped-def]
        ctx.state.when = object()


async def test_non_json_state_fails_at_assignment() -> None:
    with pytest.raises(loom.WorkflowExecutionError) as info:
        await BadState.compile().execute({})
    assert info.value.error_type == "StateSerializationError"
    assert "state['when']" in info.value.error_message


async def test_blocked_local_run_raises_instead_of_hanging() -> None:
    @loom.workflow(name="Waits")
    class Waits(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
        @loom.step
        async def wait(self, ctx):  # type: ignore[no-untyped-def]
            await ctx.wait_for_signal("go")

    with pytest.raises(loom.LoomError, match="pass the signals it waits for"):
        await Waits.compile().execute({})


async def test_wall_clock_sleep_in_workflow_is_refused() -> None:
    import asyncio

    @loom.workflow(name="Sleeper")
    class Sleeper(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
        @loom.step
        async def nap(self, ctx):  # type: ignore[no-untyped-def]
            await asyncio.sleep(1)

    with pytest.raises(loom.WorkflowExecutionError, match=r"use `await ctx\.sleep"):
        await Sleeper.compile().execute({})
