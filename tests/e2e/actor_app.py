"""Actors served by `loom worker --app tests.e2e.actor_app` in the e2e tests."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import loom


@loom.activity(retry=3, timeout=10)
async def stamp(message_id: int) -> int:
    """A real suspension point inside the handler (so a kill can land mid-message); returns
    the pid of the worker process that ran it."""
    await asyncio.sleep(0.002)
    return os.getpid()


@loom.actor(name="Ledger", snapshot_every=7)
class Ledger(loom.Actor[dict[str, Any]]):
    """Records every message id it handles, in order: gaps or repeats show at once."""

    @loom.handler
    async def add(self, ctx: loom.WorkflowContext[Any, Any], payload: int) -> int:
        pid = await ctx.activity(stamp, payload)
        ctx.state["ids"] = [*ctx.state.get("ids", []), payload]
        pids = dict(ctx.state.get("pids", {}))
        pids[str(pid)] = pids.get(str(pid), 0) + 1
        ctx.state["pids"] = pids
        return len(ctx.state["ids"])

    @loom.handler
    async def ids(self, ctx: loom.WorkflowContext[Any, Any], payload: None) -> list[int]:
        return list(ctx.state.get("ids", []))
