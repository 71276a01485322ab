"""Soak: thousands of hostile calls (sleepers, fuel burners, log floods, denied capabilities,
handle hoarders, sleeping components) through one runtime. Each must fail its own typed way
and on time, and the worker's RSS, open descriptors and sandbox processes must stay bounded."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import wasmtime

from tests.wasm_activities.build import BUILD_DIR
from tests.wasm_activities.test_blocking import LOG_FOREVER, loop_lag
from tests.wasm_activities.test_soak import LOOP_WAT, rss_mb
from wasm_activities import (
    ActivityTimeout,
    CapabilityDenied,
    FsGrant,
    FuelExhausted,
    Grants,
    Limits,
    LogTooLarge,
    SandboxError,
    SandboxRuntime,
)

Case = Callable[[], Awaitable[None]]
LATE_S = 3.0  # any hostile call here ends within this of its limit, even on a busy machine
MAX_LAG_S = 1.0  # looser than the single-call tests' 250 ms: minutes of load on 2 shared cores


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _children(parents: set[str]) -> set[str]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                state, ppid = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:2]
            except OSError:
                continue
            if ppid in parents and state != "Z":
                found.add(entry.name)
    return found


def sandbox_processes() -> set[str]:
    """Live sandbox processes (pids): children of the fork server, this process's child."""
    return _children(_children({str(os.getpid())}))


def sandbox_rss_mb() -> float:
    total = 0.0
    for pid in sandbox_processes():
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
    return total


def make_cases(
    runtime: SandboxRuntime, wasm_module: Callable[[str], bytes], data: Path
) -> list[Case]:
    sleeper = runtime.prepare(wasm_module("sleeper.c"), "reactor")
    burner = runtime.prepare(wasmtime.wat2wasm(LOOP_WAT), "reactor")
    flood = runtime.prepare(wasmtime.wat2wasm(LOG_FOREVER), "reactor")
    http = runtime.prepare(wasm_module("http_client.c"), "reactor")
    hog = runtime.prepare(wasm_module("fd_hog.c"), "reactor")
    py_sleeper = runtime.prepare(wasm_module("py_sleeper"), "component")
    (data / "f").write_text("x")
    fs = Grants(fs=[FsGrant(host=str(data), guest="/data")])

    async def expect(error: type[SandboxError], limit_ms: int, call: Awaitable[Any]) -> None:
        began = time.monotonic()
        with pytest.raises(error):
            await call
        assert time.monotonic() - began < limit_ms / 1000 + LATE_S, error.__name__

    async def sleep() -> None:
        limits = Limits(timeout_ms=50)
        await expect(ActivityTimeout, 50, runtime.run(sleeper, {"sleep_ms": 5000}, limits=limits))

    async def burn() -> None:
        limits = Limits(fuel=200_000, timeout_ms=5000)
        await expect(FuelExhausted, 5000, runtime.run(burner, {}, limits=limits))

    async def spin() -> None:
        await expect(ActivityTimeout, 30, runtime.run(burner, {}, limits=Limits(timeout_ms=30)))

    async def log_flood() -> None:
        await expect(LogTooLarge, 2000, runtime.run(flood, {}))

    async def denied() -> None:
        request = {"request": json.dumps({"url": "http://127.0.0.1:9/"}), "needle_xor": ""}
        await expect(CapabilityDenied, 2000, runtime.run(http, request))

    async def hoard() -> None:
        limits = Limits(max_open_files=16)
        result = await runtime.run(hog, {"open": 20_000}, grants=fs, limits=limits)
        assert result.output["error"] != "none" and result.output["opened"] <= 16

    async def component_sleep() -> None:
        limits = Limits(timeout_ms=200, memory_mb=128)
        call = runtime.run(py_sleeper, {"sleep_ms": 5000}, limits=limits)
        await expect(ActivityTimeout, 200, call)

    # a sleeping component costs its sandbox process (killed, replaced): the rarest case
    return [sleep, burn, spin, log_flood, denied, hoard] * 30 + [component_sleep]


async def hostile_soak(calls: int, wasm_module: Callable[[str], bytes], data: Path) -> None:
    rng = random.Random(1212)
    others = sandbox_processes()  # other runtimes' (the test session's)
    runtime = SandboxRuntime(cache_dir=BUILD_DIR.parent / "wasm-artifacts", max_workers=2)
    try:
        cases = make_cases(runtime, wasm_module, data)
        warmup = max(calls // 10, 60)
        batch = 24
        done = 0
        began = time.monotonic()
        rss_before = fds_before = 0.0
        children_max = 0
        async with loop_lag() as lags:
            while done < calls:
                size = min(batch, calls - done)
                await asyncio.gather(*(rng.choice(cases)() for _ in range(size)))
                done += size
                children_max = max(children_max, len(sandbox_processes() - others))
                if not rss_before and done >= warmup:
                    rss_before, fds_before = rss_mb(), open_fds()
        rss_after, fds_after, children_rss = rss_mb(), open_fds(), sandbox_rss_mb()
        elapsed = time.monotonic() - began
    finally:
        runtime.close()
    print(
        f"\nhostile soak: {calls} calls in {elapsed:.0f} s; worker RSS after warm-up "
        f"{rss_before:.1f} MB, at end {rss_after:.1f} MB (+{rss_after - rss_before:.1f}); open "
        f"fds {fds_before:.0f} -> {fds_after}; sandbox processes at most {children_max} (their "
        f"RSS at the end {children_rss:.0f} MB), {len(sandbox_processes() - others)} after "
        f"close; event loop lag max {max(lags) * 1000:.0f} ms"
    )
    assert max(lags) < MAX_LAG_S, f"the event loop stalled {max(lags):.3f}s"
    assert rss_after - rss_before < 64, "RSS grew by more than 64 MB after warm-up"
    assert fds_after - fds_before <= 8, "the worker's open descriptors grew"
    assert children_max <= 2 + 2 + 2, "sandbox processes piled up"  # idle cap, spare, killed
    assert not sandbox_processes() - others, "a sandbox process outlived its runtime"


async def test_hostile_soak_small(wasm_module: Callable[[str], bytes], tmp_path: Path) -> None:
    await hostile_soak(300, wasm_module, tmp_path)


@pytest.mark.slow
@pytest.mark.timeout(1800)
async def test_hostile_soak_ten_thousand_calls(
    wasm_module: Callable[[str], bytes], tmp_path: Path
) -> None:
    await hostile_soak(10_000, wasm_module, tmp_path)
