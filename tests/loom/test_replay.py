"""Replay: code changed under a running workflow suspends visibly, naming both commands;
committed golden histories still replay against the current code."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

import loom
from examples.order import OrderWorkflow
from loom._export import read_history
from loom.cli import main
from loom.client import get_store
from loom.history import Event, EventKind
from loom.replay import WorkflowRun

HISTORIES = Path(__file__).parent / "histories"


@loom.activity
async def reserve(item: str) -> str:
    return f"reserved {item}"


@loom.activity
async def release(item: str) -> str:
    return f"released {item}"


def _shipping(first: object) -> type[loom.Workflow[dict, dict]]:  # type: ignore[type-arg]
    """Two versions of one workflow type; they differ in their first activity."""

    class Shipping(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
        @loom.step
        async def ship(self, ctx):  # type: ignore[no-untyped-def]
            ctx.state.first = await ctx.activity(first, "box")
            ctx.state.approval = await ctx.wait_for_signal("approve")

    return loom.workflow(name="Shipping")(Shipping)


async def test_changed_code_suspends_naming_both_then_resumes_on_old_code(
    db_path, make_worker
) -> None:
    """Non-determinism is fixable by a deploy: the workflow SUSPENDS (result() keeps
    waiting), keeps the error naming both commands, and the old code + resume finish it."""
    original = _shipping(reserve)
    async with make_worker([original], [reserve, release]):
        handle = await original.start({}, workflow_id="ship-1")
        while (await handle.state()).get("first") is None:
            await __import__("asyncio").sleep(0.02)
    changed = _shipping(release)
    async with make_worker([changed], [reserve, release], handbacks=0):
        await handle.signal("approve", {"ok": True})
        while await handle.status() is not loom.WorkflowStatus.SUSPENDED:
            await __import__("asyncio").sleep(0.02)
        with pytest.raises(loom.WorkflowStillRunningError, match="loom resume ship-1"):
            await handle.result(timeout=0.5)
    record = await get_store().get_workflow("ship-1")
    assert record is not None and record.error is not None
    assert record.error["type"] == "NonDeterministicWorkflowError"
    assert "ACTIVITY_SCHEDULED reserve(args" in record.error["details"]["expected"]
    assert "ACTIVITY_SCHEDULED release(args" in record.error["details"]["actual"]
    assert "reserve" in record.error["message"] and "release" in record.error["message"]
    inspected = await asyncio.to_thread(
        CliRunner().invoke, main, ["inspect", "ship-1", "--db", str(db_path)]
    )
    assert "SUSPENDED" in inspected.output and "NonDeterministicWorkflowError" in inspected.output
    assert re.search(r"expected:?\s+ACTIVITY_SCHEDULED reserve", inspected.output), inspected.output
    assert re.search(r"code issued:?\s+ACTIVITY_SCHEDULED release", inspected.output)
    assert re.search(r"attempt:?\s+\d", inspected.output)
    async with make_worker([original], [reserve, release]):
        assert await handle.resume() is True
        assert await handle.result(timeout=30) == {
            "first": "reserved box",
            "approval": {"ok": True},
        }


def _load(name: str) -> list[Event]:
    """A golden history: the file `loom history export` writes."""
    return read_history(HISTORIES / name).events


def test_golden_order_history_replays() -> None:
    run = WorkflowRun(OrderWorkflow.compile(), "golden-order")
    run.apply(_load("order_completed.json"))
    assert run.failure is None
    activation = run.take_activation()
    assert activation.status is loom.WorkflowStatus.COMPLETED
    assert activation.state == {
        "paid": True,
        "receipt": "rcpt-o-7-4200",
        "email_sent": True,
    }
    # Replay reproduces exactly the recorded commands: nothing new is emitted.
    assert [e.kind for e in activation.events] == [EventKind.WORKFLOW_COMPLETED]


def test_golden_history_against_reordered_steps_is_non_deterministic() -> None:
    @loom.workflow(name="Order")
    class Reordered(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
        @loom.step(name="confirm")
        async def confirm(self, ctx):  # type: ignore[no-untyped-def]
            pass

        @loom.step(name="pay")
        async def pay(self, ctx):  # type: ignore[no-untyped-def]
            pass

    try:
        run = WorkflowRun(Reordered.compile(), "golden-order")
        run.apply(_load("order_completed.json"))
    finally:
        OrderWorkflow.__loom_compiled__ = None
        OrderWorkflow.compile()  # restore the name -> class mapping for other tests
    assert isinstance(run.failure, loom.NonDeterministicWorkflowError)
    assert run.failure.expected == "STEP_STARTED pay"
    assert run.failure.actual == "STEP_STARTED confirm"


def test_history_with_missing_command_is_non_deterministic() -> None:
    events = _load("order_completed.json")

    # Code that stops early leaves recorded commands unmatched.
    @loom.workflow(name="OrderShort")
    class Short(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
        @loom.step(name="pay")
        async def pay(self, ctx):  # type: ignore[no-untyped-def]
            await ctx.wait_for_signal("never")

    run = WorkflowRun(Short.compile(), "golden-order")
    run.apply(events)
    assert isinstance(run.failure, loom.NonDeterministicWorkflowError)
    assert "ACTIVITY_SCHEDULED charge" in run.failure.expected
    assert "SIGNAL_WAIT_STARTED never" in run.failure.actual
