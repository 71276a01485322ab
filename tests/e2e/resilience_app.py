"""The app of the resilience e2e runs: a breaker-guarded activity whose downstream is "down"
while a file exists (every execution appends a line), and a workflow schedules start."""

from __future__ import annotations

import os
from pathlib import Path

import loom


@loom.activity(retry=1, circuit_breaker=loom.CircuitBreaker(failures=3, reset_after=3600))
async def guarded(folder: str, caller: str) -> str:
    with (Path(folder) / "calls.txt").open("a") as calls:
        calls.write(f"{caller} {os.getpid()}\n")
    if (Path(folder) / "down").exists():
        raise ConnectionError("the downstream is down")
    return f"ok {caller}"


@loom.workflow(name="CallGuarded")
class CallGuarded(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
    @loom.step
    async def call(self, ctx):  # type: ignore[no-untyped-def]
        ctx.state.reply = await ctx.activity(guarded, ctx.input["folder"], ctx.input["caller"])


@loom.workflow(name="Tick")
class Tick(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
    @loom.step
    async def tick(self, ctx):  # type: ignore[no-untyped-def]
        ctx.state.at = ctx.now().isoformat()
