"""A rolling deploy of changed workflow code must not fail the workflows in flight.

The red team deployed an incompatible change while 6 workflows waited on a signal: every one
FAILED for good. A worker whose code cannot replay a workflow that other code started now
hands it back for a worker running that code (4 times, 0.5 s to 4 s apart); with none
left, the workflow is SUSPENDED until the change is rolled back and it is resumed
(tests/loom/test_replay.py, test_suspend.py).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import loom
from loom.store import Store

WORKFLOWS = 6


@loom.activity(retry=1, timeout=5)
async def label(text: str) -> str:
    return f"<{text}>"


@loom.workflow(name="Deployed")
class OldCode(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
    @loom.step
    async def run(self, ctx):  # type: ignore[no-untyped-def]
        ctx.state.first = await ctx.activity(label, "first")
        await ctx.wait_for_signal("go")
        ctx.state.second = await ctx.activity(label, "second")


@loom.workflow(name="Deployed")
class NewCode(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
    """The deploy: a new first command, so histories of OldCode no longer replay."""

    @loom.step
    async def run(self, ctx):  # type: ignore[no-untyped-def]
        await ctx.sleep(0.01)
        ctx.state.first = await ctx.activity(label, "first")
        await ctx.wait_for_signal("go")
        ctx.state.second = await ctx.activity(label, "second")


async def _statuses(store: Store, ids: list[str]) -> set[loom.WorkflowStatus]:
    return {r.status for r in await store.get_workflows(ids)}


async def _parked(store: Store, ids: list[str]) -> None:
    for _ in range(400):
        events = [await store.list_events(i) for i in ids]
        if all(any(e.kind.value == "SIGNAL_WAIT_STARTED" for e in h) for h in events):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the workflows did not reach their signal wait")


async def test_new_code_leaves_old_workflows_to_old_code_or_a_rollback(
    store: Store, make_worker: Any
) -> None:
    assert OldCode.compile().source_hash != NewCode.compile().source_hash
    async with make_worker([OldCode], [label]):
        handles = [await OldCode.start({}) for _ in range(WORKFLOWS)]
        ids = [h.workflow_id for h in handles]
        await _parked(store, ids)
    # Only the new code runs now; the signals make every workflow replay on it.
    async with make_worker([NewCode], [label]):
        for handle in handles:
            await handle.signal("go")
        await asyncio.sleep(2.5)  # several hand-backs: 0.5 s, 1 s, 2 s
        assert await _statuses(store, ids) == {loom.WorkflowStatus.RUNNING}
    logs = [m for _, _, m in await store.list_logs(ids[0])]
    assert any(
        f"run by code with source_hash {OldCode.compile().source_hash}" in m and "loom replay" in m
        for m in logs
    ), logs
    # The rollback (or an old worker still up): every workflow finishes, nothing failed.
    async with make_worker([OldCode], [label]):
        for handle in handles:
            assert await handle.result(timeout=90) == {"first": "<first>", "second": "<second>"}


@pytest.mark.timeout(180)
async def test_new_workflows_run_on_the_new_code_beside_old_workers(
    store: Store, make_worker: Any
) -> None:
    """Old and new workers side by side: each workflow ends up on the code that started it."""
    async with make_worker([OldCode], [label]), make_worker([NewCode], [label]):
        handles = [await OldCode.start({}) for _ in range(3)]
        handles += [await NewCode.start({}) for _ in range(3)]
        await _parked(store, [h.workflow_id for h in handles])
        for handle in handles:
            await handle.signal("go")
        for handle in handles:
            assert await handle.result(timeout=120) == {"first": "<first>", "second": "<second>"}
