"""State proxy: attribute and dict styles, set/update/batch, each mutation an event."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import loom
from loom.client import get_store
from loom.history import EventKind


@loom.workflow(name="StateStyles")
class StateStyles(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
    @loom.step
    async def mutate(self, ctx):  # type: ignore[no-untyped-def]
        ctx.state.a = 1
        ctx.state["b"] = [1]
        await ctx.state.set("c", {"x": 1})
        await ctx.state.update(lambda s: {**s, "a": s["a"] + 1, "d": "new"})
        async with ctx.state.batch():
            ctx.state.e = True
            ctx.state["f"] = None
        ctx.state.b.append(2)  # in-place edit, noticed before the next command
        await ctx.sleep(0)
        ctx.state.g = ctx.state.get("missing", "default")


EXPECTED = {"a": 2, "b": [1, 2], "c": {"x": 1}, "d": "new", "e": True, "f": None, "g": "default"}


async def test_state_styles_locally() -> None:
    assert await StateStyles.compile().execute({}) == EXPECTED


async def test_every_mutation_is_an_event(db_path, make_worker) -> None:
    async with make_worker([StateStyles]):
        handle = await StateStyles.start({}, workflow_id="styles")
        assert await handle.result(timeout=10) == EXPECTED
    events = await get_store().list_events("styles")
    state_events = [
        (
            e.kind,
            e.payload.get("key"),
            e.payload.get("value"),
            e.payload.get("changes", e.payload.get("patch")),
        )
        for e in events
        if e.kind in (EventKind.STATE_SET, EventKind.STATE_UPDATE, EventKind.STATE_PATCH)
    ]
    assert state_events == [
        (EventKind.STATE_SET, "a", 1, None),
        (EventKind.STATE_SET, "b", [1], None),
        (EventKind.STATE_SET, "c", {"x": 1}, None),
        (EventKind.STATE_UPDATE, None, None, {"a": 2, "d": "new"}),
        (EventKind.STATE_UPDATE, None, None, {"e": True, "f": None}),
        # the in-place append is one JSON Patch op, not a copy of the list
        (EventKind.STATE_PATCH, None, None, [{"op": "add", "path": "/b/-", "value": 2}]),
        (EventKind.STATE_SET, "g", "default", None),
    ]


@dataclass
class Basket:
    items: list[str] = field(default_factory=list)
    tags: dict[str, int] = field(default_factory=dict)


@loom.workflow(name="Basket")
class BasketFlow(loom.Workflow[dict, Basket]):  # type: ignore[type-arg]
    @loom.step
    async def fill(self, ctx):  # type: ignore[no-untyped-def]
        ctx.state.items.append(ctx.input["item"])  # the declared field, not dict.items
        ctx.state.tags[ctx.input["item"]] = len(ctx.state.items)


async def test_state_defaults_never_leak_between_runs_and_fields_win_over_helpers(
    make_worker: Any,
) -> None:
    async with make_worker([BasketFlow]):
        first = await BasketFlow.start({"item": "apple"})
        assert await first.result(timeout=30) == Basket(items=["apple"], tags={"apple": 1})
        second = await BasketFlow.start({"item": "pear"})
        assert await second.result(timeout=30) == Basket(items=["pear"], tags={"pear": 1})
    assert BasketFlow.compile().initial_state() == {"items": [], "tags": {}}
