"""The app of the definition crash test: a definition whose middle activity is gated on a
file, so the test can SIGKILL the worker while it runs."""

from __future__ import annotations

import asyncio
from pathlib import Path

import loom
import loom.wdl


def _append(folder: str, line: str) -> None:
    with (Path(folder) / "marks.txt").open("a") as out:
        out.write(line + "\n")


@loom.activity(name="wdl-mark", retry=3, timeout=60, initial_interval=0.05)
async def mark(folder: str, name: str) -> str:
    _append(folder, f"done {name}")
    return name


@loom.activity(name="wdl-gated", retry=3, timeout=60, initial_interval=0.05)
async def gated(folder: str) -> str:
    _append(folder, "started gated")
    while not (Path(folder) / "gate").exists():  # the test kills the worker here
        await asyncio.sleep(0.05)
    _append(folder, "done gated")
    return "gated"


gated_flow = loom.wdl.load(
    {
        "name": "gated-flow",
        "steps": [
            {
                "id": "first",
                "type": "activity",
                "activity": "wdl-mark",
                "input": {"folder": "{{ folder }}", "name": "first"},
                "output": "first",
            },
            {
                "id": "gated",
                "type": "activity",
                "activity": "wdl-gated",
                "input": {"folder": "{{ folder }}"},
                "output": "gated",
            },
            {
                "id": "last",
                "type": "activity",
                "activity": "wdl-mark",
                "input": {"folder": "{{ folder }}", "name": "last"},
                "output": "last",
            },
        ],
    }
)
