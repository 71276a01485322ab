"""A WASI preview 2 component (componentize-py) that sleeps, spins or floods its log ends at its
limit on every path, and holds up neither other calls nor the event loop.

A component's sleep (`wasi:clocks/monotonic-clock` subscribe + `wasi:io/poll`) waits in
wasmtime's native code, out of the epoch's reach: before components ran in a sandbox process,
one slept its full 5 s under a 500 ms limit.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from tests.wasm_activities.test_blocking import LATE_S, MAX_LAG_S, loop_lag
from wasm_activities import (
    ActivityTimeout,
    Limits,
    LogTooLarge,
    PreparedModule,
    SandboxRuntime,
)

pytestmark = pytest.mark.timeout(300)

Prepared = Callable[[str], PreparedModule]
LIMIT = Limits(timeout_ms=500, memory_mb=128)
LONG = Limits(timeout_ms=20_000, memory_mb=128)


def test_a_sleeping_component_times_out_on_time_and_the_next_call_works(
    runtime: SandboxRuntime, prepared: Prepared
) -> None:
    sleeper = prepared("py_sleeper")
    for request in ({"sleep_ms": 5000}, {"spin": True}):
        began = time.monotonic()
        with pytest.raises(ActivityTimeout, match="500 ms"):
            runtime.run_sync(sleeper, request, limits=LIMIT)
        assert time.monotonic() - began < LATE_S, request
    # the process that was killed in its sleep is replaced
    assert runtime.run_sync(sleeper, {"sleep_ms": 1}, limits=LONG).output == {"woke": True}


def test_a_component_sleep_within_its_limit_really_sleeps(
    runtime: SandboxRuntime, prepared: Prepared
) -> None:
    sleeper = prepared("py_sleeper")
    runtime.run_sync(sleeper, {}, limits=LONG)  # a process with the component loaded
    began = time.monotonic()
    result = runtime.run_sync(sleeper, {"sleep_ms": 300}, limits=LONG)
    assert result.output == {"woke": True}
    assert 0.29 <= time.monotonic() - began < 10


def test_a_component_flooding_its_log_stops_at_once_not_after_its_sleep(
    runtime: SandboxRuntime, prepared: Prepared
) -> None:
    began = time.monotonic()
    with pytest.raises(LogTooLarge):
        runtime.run_sync(
            prepared("py_sleeper"),
            {"log": 100, "sleep_ms": 5000},
            limits=Limits(timeout_ms=5000, memory_mb=128, max_log_bytes=10_000),
        )
    assert time.monotonic() - began < LATE_S


async def test_sleeping_components_leave_the_loop_and_other_calls_free(
    runtime: SandboxRuntime, prepared: Prepared
) -> None:
    sleeper = prepared("py_sleeper")
    words = prepared("word-count")
    async with loop_lag() as lags:
        began = time.monotonic()
        with pytest.raises(ActivityTimeout):
            await runtime.run(sleeper, {"sleep_ms": 5000}, limits=LIMIT)
        timed_out = time.monotonic() - began
        # more sleepers than pool threads (2 cores), each sleeping well within its limit
        sleepers = [
            asyncio.create_task(runtime.run(sleeper, {"sleep_ms": 6000}, limits=LONG))
            for _ in range(4)
        ]
        began = time.monotonic()
        assert (await runtime.run(words, {"text": "a b"})).output["words"] == 2
        assert (await runtime.run(sleeper, {}, limits=LONG)).output == {"woke": True}
        short = time.monotonic() - began
        outcomes = await asyncio.gather(*sleepers)
    assert timed_out < LATE_S
    assert short < 4.0, f"short calls waited {short:.2f}s behind 6 s sleepers"
    assert [r.output for r in outcomes] == [{"woke": True}] * 4
    assert max(lags) < MAX_LAG_S, f"the event loop stalled {max(lags):.3f}s"
