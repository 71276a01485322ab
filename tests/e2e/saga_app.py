"""The app of the saga crash test: bookings undone in reverse, the middle undo gated on a file
so the test can SIGKILL the worker while it runs."""

from __future__ import annotations

import asyncio
from pathlib import Path

import loom


def _append(folder: str, name: str, line: str) -> None:
    with (Path(folder) / name).open("a") as out:
        out.write(line + "\n")


@loom.activity(retry=3, timeout=60, initial_interval=0.05)
async def book(folder: str, item: str) -> str:
    if item == "boom":
        raise RuntimeError("the last booking fails")
    _append(folder, "effects.txt", f"book {item}")
    return item


@loom.activity(retry=3, timeout=60, initial_interval=0.05)
async def unbook(folder: str, item: str) -> None:
    _append(folder, "attempts.txt", f"unbook {item}")
    if item == "b":
        gate = Path(folder) / "gate"
        while not gate.exists():  # the test kills the worker here, then opens the gate
            await asyncio.sleep(0.05)
    _append(folder, "effects.txt", f"unbook {item}")


@loom.workflow(name="GatedTrip")
class GatedTrip(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
    @loom.step
    async def plan(self, ctx):  # type: ignore[no-untyped-def]
        folder = ctx.input["folder"]
        async with ctx.saga() as saga:
            for item in ("a", "b", "c", "boom"):
                await ctx.activity(book, folder, item)
                saga.compensate(unbook, folder, item)
