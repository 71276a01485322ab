"""WASM activity call overhead, measured against a plain Python `async def` in the same run.

Cases (one line each: p50 / p99 per call, and the ratio to the baseline where it applies):
  baseline-async      `await f(x)` of a plain `async def` that returns a dict (the floor).
  baseline-hop        the same function through `loop.run_in_executor` (the bare thread hop).
  reactor-min-sync    `runtime.run_sync` of a minimal reactor (inline WAT echo: no libc, no WASI),
                      so everything measured is runtime overhead (fresh Store per call).
  reactor-min         `await runtime.run(...)` of the same: the per-call overhead including the
                      thread hop that DESIGN.md targets (p50 <= 100 us).
  reactor             `await runtime.run(...)` of the C reactor `word-count` (wasi-libc start-up,
                      malloc and the counting included).
  command             `await runtime.run(...)` of the C command `echo` (WASI stdin/stdout;
                      target p50 <= 350 us).
  component           `await runtime.run(...)` of the Python component `py-greet` (informative).
  cache-load          deserialize a compiled artifact from the on-disk cache (target <= 2 ms)...
  compile             ...versus compiling the module from its bytes (word-count, py-greet).
  parallel            N concurrent reactor calls (asyncio.gather) on the runtime's thread pool:
                      calls/s, versus the same N run sequentially; once with the tiny input
                      (call overhead, GIL-bound) and once counting 256 KiB of text per call
                      (allocation-heavy wasm), and once for a pure-compute busy loop (wasmtime
                      releases the GIL, so wasm-bound calls scale with cores).

Usage:
  python bench/wasm_overhead.py [--calls 5000] [--reps 3] [--parallel 2000] [--json]

Modules are built from examples/activities into .build/wasm/ (toolchain from the venv).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import wasmtime

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.wasm_activities.build import build_example
from wasm_activities import Limits, PreparedModule, SandboxRuntime

MINIMAL_REACTOR = """(module
 (memory (export "memory") 1)
 (global $heap (mut i32) (i32.const 1024))
 (func (export "alloc") (param i32) (result i32) (local i32)
   global.get $heap local.set 1
   global.get $heap local.get 0 i32.add global.set $heap
   local.get 1)
 (func (export "run") (param i32 i32) (result i64)
   local.get 0 i64.extend_i32_u i64.const 32 i64.shl local.get 1 i64.extend_i32_u i64.or))"""
INPUT = {"text": "the quick brown fox jumps over the lazy dog"}
BUSY_REACTOR = MINIMAL_REACTOR.replace(
    '(func (export "run") (param i32 i32) (result i64)',
    '(func (export "run") (param i32 i32) (result i64) (local i32)'
    " i32.const 3000000 local.set 2"
    " (loop local.get 2 i32.const 1 i32.sub local.tee 2 br_if 0)",
)  # ~1-2 ms of pure wasm compute, then echoes its input
HEAVY_INPUT = {"text": "lorem ipsum dolor sit amet " * 9709}  # 256 KiB
COMPONENT_LIMITS = Limits(memory_mb=128, timeout_ms=10_000)


async def plain_activity(value: dict[str, Any]) -> dict[str, Any]:
    return {"words": len(value["text"].split()), "chars": len(value["text"])}


def summarize(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_us": ordered[len(ordered) // 2] * 1e6,
        "p99_us": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e6,
        "mean_us": statistics.fmean(ordered) * 1e6,
    }


async def time_async(call: Callable[[], Awaitable[Any]], n: int) -> list[float]:
    for _ in range(min(200, n)):
        await call()
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - start)
    return samples


def time_sync(call: Callable[[], Any], n: int) -> list[float]:
    for _ in range(min(200, n)):
        call()
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return samples


async def bench_calls(
    runtime: SandboxRuntime, modules: dict[str, PreparedModule], calls: int
) -> dict[str, dict[str, float]]:
    loop = asyncio.get_running_loop()
    reactor, command, component = modules["word-count"], modules["echo"], modules["py-greet"]
    minimal = modules["minimal"]

    def hop() -> Awaitable[Any]:
        return loop.run_in_executor(None, lambda: INPUT)

    cases: dict[str, list[float]] = {
        "baseline-async": await time_async(lambda: plain_activity(INPUT), calls),
        "baseline-hop": await time_async(hop, calls),
        "reactor-min-sync": time_sync(lambda: runtime.run_sync(minimal, INPUT), calls),
        "reactor-min": await time_async(lambda: runtime.run(minimal, INPUT), calls),
        "reactor": await time_async(lambda: runtime.run(reactor, INPUT), calls),
        "command": await time_async(lambda: runtime.run(command, INPUT), calls),
        "component": await time_async(
            lambda: runtime.run(component, {"name": "Ada"}, limits=COMPONENT_LIMITS),
            max(calls // 20, 50),
        ),
    }
    return {name: summarize(samples) for name, samples in cases.items()}


def bench_cache(runtime: SandboxRuntime, wasm: dict[str, bytes], reps: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name, abi in [("word-count", "reactor"), ("py-greet", "component")]:
        sha = runtime.prepare(wasm[name], abi).sha256
        load = [time_one(functools.partial(runtime.load_cached, sha, abi)) for _ in range(reps * 5)]
        compile_ = [
            time_one(functools.partial(runtime.compile_uncached, wasm[name], abi))
            for _ in range(reps)
        ]
        results[name] = {
            "cache_load_ms": statistics.median(load) * 1e3,
            "compile_ms": statistics.median(compile_) * 1e3,
        }
    return results


def time_one(call: Callable[[], Any]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


async def bench_parallel(
    runtime: SandboxRuntime, module: PreparedModule, n: int, value: Any
) -> dict[str, float]:
    start = time.perf_counter()
    for _ in range(n):
        await runtime.run(module, value)
    sequential = n / (time.perf_counter() - start)
    start = time.perf_counter()
    await asyncio.gather(*(runtime.run(module, value) for _ in range(n)))
    parallel = n / (time.perf_counter() - start)
    return {"sequential_per_s": sequential, "parallel_per_s": parallel}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--parallel", type=int, default=2000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    wasm = {name: build_example(name).read_bytes() for name in ["word-count", "echo", "py-greet"]}
    abis = {"word-count": "reactor", "echo": "command", "py-greet": "component"}
    with tempfile.TemporaryDirectory() as cache, SandboxRuntime(cache_dir=cache) as runtime:
        modules = {name: runtime.prepare(data, abis[name]) for name, data in wasm.items()}
        modules["minimal"] = runtime.prepare(wasmtime.wat2wasm(MINIMAL_REACTOR), "reactor")
        modules["busy"] = runtime.prepare(wasmtime.wat2wasm(BUSY_REACTOR), "reactor")
        reps = [await bench_calls(runtime, modules, args.calls) for _ in range(args.reps)]
        calls = {
            case: {k: statistics.median(r[case][k] for r in reps) for k in reps[0][case]}
            for case in reps[0]
        }
        cache_figures = bench_cache(runtime, wasm, args.reps)
        parallel = {
            "tiny": await bench_parallel(runtime, modules["word-count"], args.parallel, INPUT),
            "256KiB": await bench_parallel(
                runtime, modules["word-count"], max(args.parallel // 20, 20), HEAVY_INPUT
            ),
            "busy-loop": await bench_parallel(
                runtime, modules["busy"], max(args.parallel // 20, 20), None
            ),
        }
    report = {
        "cpus": os.cpu_count(),
        "calls": calls,
        "cache": cache_figures,
        "parallel": parallel,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    base = calls["baseline-async"]["p50_us"]
    print(f"wasm_overhead: {args.calls} calls x {args.reps} reps, {os.cpu_count()} CPUs (medians)")
    for case, fig in calls.items():
        overhead = fig["p50_us"] - base
        print(
            f"  {case:<15} p50 {fig['p50_us']:8.1f} us  p99 {fig['p99_us']:8.1f} us"
            f"  overhead vs async def p50 {overhead:8.1f} us  ({fig['p50_us'] / base:6.1f}x)"
        )
    for name, fig in cache_figures.items():
        print(
            f"  cache {name:<10} load {fig['cache_load_ms']:7.2f} ms  compile "
            f"{fig['compile_ms']:8.2f} ms  ({fig['compile_ms'] / fig['cache_load_ms']:.0f}x)"
        )
    for label, fig in parallel.items():
        print(
            f"  parallel reactor ({label} input): {fig['parallel_per_s']:,.0f} calls/s "
            f"(sequential {fig['sequential_per_s']:,.0f} calls/s, "
            f"{fig['parallel_per_s'] / fig['sequential_per_s']:.2f}x)"
        )


if __name__ == "__main__":
    asyncio.run(main())
