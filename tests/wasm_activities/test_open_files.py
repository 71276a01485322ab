"""A guest with a read-only fs grant opening 20,000 handles is refused at its per-call cap
(`Limits.max_open_files`); the worker's own descriptors are never at stake, and the handles
are gone when the call ends. Before, such a guest made the worker's own sockets, files and
SQLite opens fail with EMFILE while it ran."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from wasm_activities import FsGrant, Grants, Limits, PreparedModule, SandboxRuntime

pytestmark = pytest.mark.timeout(300)

Prepared = Callable[[str], PreparedModule]
# wasmtime hands the host's EMFILE to the guest as a plain I/O error (EIO)
REFUSED = {"EMFILE", "I/O error"}


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def grants(tmp_path: Path) -> Grants:
    (tmp_path / "f").write_text("x")
    return Grants(fs=[FsGrant(host=str(tmp_path), guest="/data")])


def test_a_guest_hoarding_handles_gets_emfile_at_the_cap(
    runtime: SandboxRuntime, prepared: Prepared, grants: Grants
) -> None:
    hog = prepared("fd_hog.c")
    before = open_fds()
    result = runtime.run_sync(hog, {"open": 20_000}, grants=grants, limits=Limits())
    assert result.output["error"] in REFUSED
    # the default cap is 256 (a few descriptors of the sandbox process's own count in it)
    assert 200 <= result.output["opened"] <= 256
    small = runtime.run_sync(hog, {"open": 20_000}, grants=grants, limits=Limits(max_open_files=8))
    assert small.output["error"] in REFUSED and small.output["opened"] <= 8
    # the cap is per call: a call after a hoarder gets its whole allowance again
    assert runtime.run_sync(hog, {"open": 100}, grants=grants).output == {
        "opened": 100,
        "error": "none",
    }
    # none of the guests' 500-odd handles: at most the pipes of a few new sandbox processes
    assert open_fds() - before < 32


async def test_the_worker_opens_files_and_sockets_while_guests_hoard(
    runtime: SandboxRuntime, prepared: Prepared, grants: Grants, tmp_path: Path
) -> None:
    hog = prepared("fd_hog.c")
    done = threading.Event()
    rounds = []

    def open_mine() -> None:
        """What the worker does meanwhile: its own files and sockets, 50 at a time."""
        while not done.is_set() or not rounds:
            with contextlib.ExitStack() as mine, socket.socket() as sock:
                for _ in range(50):
                    mine.enter_context(open(tmp_path / "f"))
                sock.bind(("127.0.0.1", 0))
            rounds.append(1)

    worker = asyncio.create_task(asyncio.to_thread(open_mine))
    try:
        outcomes = await asyncio.gather(
            *(runtime.run(hog, {"open": 20_000}, grants=grants) for _ in range(6))
        )
    finally:
        done.set()
        await worker  # raises the OSError had any of the worker's own opens failed
    assert all(r.output["error"] in REFUSED for r in outcomes)
