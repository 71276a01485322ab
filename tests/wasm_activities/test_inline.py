"""Short calls of side-effect-free reactors run on the event loop; anything longer, or anything
that could touch the outside world, runs on the pool, and the loop never waits long."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import wasmtime

from wasm_activities import (
    Abi,
    ActivityTimeout,
    FuelExhausted,
    Grants,
    Limits,
    PreparedModule,
    SandboxRuntime,
    engine,
)
from wasm_activities.engine import INLINE_FUEL

Prepared = Callable[[str], PreparedModule]
PoolJobs = Callable[[], int]
NET = Grants(net=["127.0.0.1:9"])  # any network grant keeps a call off the loop

# `run` echoes its input after counting down from the i32 at address 0 (set via the data
# segment), so one module can be made as slow as a test needs.
SPIN_WAT = """(module
 (memory (export "memory") 1)
 (global $heap (mut i32) (i32.const 1024))
 (data (i32.const 0) "SPINS")
 (func (export "alloc") (param i32) (result i32) (local i32)
   global.get $heap local.set 1
   global.get $heap local.get 0 i32.add global.set $heap
   local.get 1)
 (func (export "run") (param i32 i32) (result i64) (local $n i32)
   (local.set $n (i32.load (i32.const 0)))
   (block (loop
     (br_if 1 (i32.eqz (local.get $n)))
     (local.set $n (i32.sub (local.get $n) (i32.const 1)))
     (br 0)))
   local.get 0 i64.extend_i32_u i64.const 32 i64.shl local.get 1 i64.extend_i32_u i64.or))"""


def spinner(runtime: SandboxRuntime, spins: int) -> PreparedModule:
    data = "".join(f"\\{b:02x}" for b in spins.to_bytes(4, "little"))
    wat = SPIN_WAT.replace("SPINS", data)
    return runtime.prepare(wasmtime.wat2wasm(wat), Abi.REACTOR)


async def test_short_pure_call_runs_on_the_loop_thread(
    runtime: SandboxRuntime, pool_jobs: PoolJobs
) -> None:
    module = spinner(runtime, 9)  # a module of its own: no other test's inline history
    result = await runtime.run(module, {"n": 1})
    assert result.output == {"n": 1}
    assert pool_jobs() == 0
    # (no check of the back-off here: on a loaded machine even this call may take > 2 ms)


async def test_call_past_the_inline_budget_is_rerun_on_the_pool(
    runtime: SandboxRuntime, pool_jobs: PoolJobs
) -> None:
    module = spinner(runtime, INLINE_FUEL)  # several instructions per spin: over budget
    result = await runtime.run(module, {"same": "answer"}, limits=Limits(timeout_ms=10_000))
    assert result.output == {"same": "answer"}
    assert result.usage.fuel_used is None  # unmetered: the inline cap is not the call's fuel
    assert pool_jobs() == 1
    skipped = module._inline.skip
    assert skipped >= 1
    await runtime.run(module, {})  # goes straight to the pool while backed off
    assert pool_jobs() == 2
    assert module._inline.skip == skipped - 1


async def test_calls_with_network_or_writable_files_never_run_inline(
    runtime: SandboxRuntime, pool_jobs: PoolJobs, tmp_path: Path
) -> None:
    module = spinner(runtime, 10)
    await runtime.run(module, {}, grants=Grants(net=["127.0.0.1:9"]))
    await runtime.run(module, {}, grants=Grants(fs=[{"host": str(tmp_path), "guest": "/d"}]))
    assert pool_jobs() == 1  # read-only files are fine, the network is not
    writable = Grants(fs=[{"host": str(tmp_path), "guest": "/d", "mode": "rw"}])
    await runtime.run(module, {}, grants=writable)
    assert pool_jobs() == 2


async def test_inline_call_reports_the_fuel_it_used_not_the_budget_left(
    runtime: SandboxRuntime, pool_jobs: PoolJobs
) -> None:
    module = spinner(runtime, 10)
    result = await runtime.run(module, {}, limits=Limits(fuel=10 * INLINE_FUEL))
    assert pool_jobs() == 0
    assert result.usage.fuel_used is not None and 0 < result.usage.fuel_used < 1_000
    pooled = await runtime.run(module, {}, limits=Limits(fuel=10 * INLINE_FUEL), grants=NET)
    assert pool_jobs() == 1
    assert pooled.usage.fuel_used == result.usage.fuel_used


async def test_own_fuel_limit_below_the_budget_fails_inline(
    runtime: SandboxRuntime, pool_jobs: PoolJobs
) -> None:
    module = spinner(runtime, INLINE_FUEL)
    with pytest.raises(FuelExhausted):
        await runtime.run(module, {}, limits=Limits(fuel=10_000))
    assert pool_jobs() == 0


async def test_long_calls_leave_the_loop_free_and_still_time_out(
    runtime: SandboxRuntime,
) -> None:
    module = spinner(runtime, 2**31 - 1)  # seconds of work
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    tick_task = asyncio.create_task(ticker())
    begin = time.monotonic()
    with pytest.raises(ActivityTimeout):
        await runtime.run(module, {}, limits=Limits(timeout_ms=300))
    tick_task.cancel()
    assert time.monotonic() - begin < 1.0
    assert ticks >= 10, f"the loop ticked {ticks} times in 300 ms: it was blocked"


async def test_wasi_reactor_writing_stdout_and_stderr_inline_keeps_its_logs(
    runtime: SandboxRuntime,
    prepared: Prepared,
    pool_jobs: PoolJobs,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # its output streams need the GIL on wasmtime's I/O thread while the loop thread waits
    monkeypatch.setattr(engine, "INLINE_MAX_S", 60.0)  # a slow moment must not send it away
    module = prepared("chatty.c")
    results = await asyncio.wait_for(
        asyncio.gather(*(runtime.run(module, {"i": i}) for i in range(20))), timeout=30
    )
    assert [r.output for r in results] == [{"i": i} for i in range(20)]
    for result in results:
        for i in range(3):
            assert f"stderr line {i}" in result.logs and f"stdout line {i}" in result.logs
    assert pool_jobs() == 0


@pytest.fixture
def pool_jobs(runtime: SandboxRuntime, monkeypatch: pytest.MonkeyPatch) -> Callable[[], int]:
    """Count the jobs the runtime hands to its thread pool during the test."""
    pool = runtime._pool
    submitted = 0
    original = pool.submit
    lock = threading.Lock()

    def submit(job: Any) -> None:
        nonlocal submitted
        with lock:
            submitted += 1
        original(job)

    monkeypatch.setattr(pool, "submit", submit)
    return lambda: submitted


async def test_a_module_that_overran_comes_back_to_the_loop_after_quiet_calls(
    runtime: SandboxRuntime, pool_jobs: PoolJobs
) -> None:
    """Overruns double the pooled stretch; calls within budget halve it again, so a module
    slow once (a cold cache, a burst of load) is not kept off the loop for good."""
    module = spinner(runtime, 11)  # short: well within the inline budget
    for _ in range(5):
        module._inline.overran()  # as if five calls had overrun: backoff 32, skip 16
    assert (module._inline.skip, module._inline.backoff) == (16, 32)
    for _ in range(16):
        await runtime.run(module, {"n": 1})  # the pooled stretch
    assert module._inline.skip == 0 and pool_jobs() == 16
    for _ in range(5):
        await runtime.run(module, {"n": 1})  # inline again, each one within budget
    assert pool_jobs() == 16
    assert module._inline.backoff == 1  # a later overrun keeps it off for one call only
