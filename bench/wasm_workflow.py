"""Workflows calling WASM activities versus the same workflow with native activities.

Cases (one process: the client and one worker, durable SQLite):
  native   workflows/s, 3 native `async def` activities per workflow (the baseline)
  wasm     workflows/s, 3 registered reactor-ABI activities per workflow, called by range
           (`ctx.activity("echo@^1", ...)`), each in a fresh wasmtime store on the pool
  ratio    wasm / native (target >= 0.70)

The reactor is a minimal echo module (WAT, assembled in the run), so the figure is the
engine + registry + sandbox overhead rather than guest work. Being pure (no network grant),
its calls run on the worker's event loop; a module with network grants, or one whose calls
take longer than the inline budget, goes through the thread pool instead.

Usage: python bench/wasm_workflow.py [--workflows 2000] [--reps 3] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import wasmtime

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import loom
from activity_registry import Registry

ECHO_WAT = """
(module
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 1024))
  (func (export "alloc") (param $len i32) (result i32)
    (local $ptr i32)
    (local.set $ptr (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $len)))
    (local.get $ptr))
  (func (export "run") (param $ptr i32) (param $len i32) (result i64)
    (i64.or (i64.shl (i64.extend_i32_u (local.get $ptr)) (i64.const 32))
            (i64.extend_i32_u (local.get $len)))))
"""

MANIFEST = """name = "echo"
version = "1.0.0"
abi = "reactor"
module = "echo.wasm"
description = "echo reactor for the benchmark"

[input_schema]
type = "object"

[output_schema]
type = "object"
"""


@loom.activity
async def echo(value: dict) -> dict:  # type: ignore[type-arg]
    return value


@loom.workflow(name="NativeThree")
class NativeThree(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
    @loom.step
    async def run(self, ctx):  # type: ignore[no-untyped-def]
        value = {"n": ctx.input["n"]}
        for _ in range(3):
            value = await ctx.activity(echo, value)
        ctx.state.value = value


@loom.workflow(name="WasmThree")
class WasmThree(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
    @loom.step
    async def run(self, ctx):  # type: ignore[no-untyped-def]
        value = {"n": ctx.input["n"]}
        for _ in range(3):
            value = await ctx.activity("echo@^1", value)
        ctx.state.value = value


async def rate(workflow: type[loom.Workflow[dict, dict]], count: int) -> float:  # type: ignore[type-arg]
    start = time.perf_counter()
    handles = await asyncio.gather(*(workflow.start({"n": i}) for i in range(count)))
    states = await asyncio.gather(*(h.result(timeout=600) for h in handles))
    elapsed = time.perf_counter() - start
    assert all(s["value"] == {"n": i} for i, s in enumerate(states))
    return count / elapsed


async def main_async(args: argparse.Namespace, folder: Path) -> dict[str, float]:
    (folder / "echo.wasm").write_bytes(wasmtime.wat2wasm(ECHO_WAT))
    (folder / "activity.toml").write_text(MANIFEST)
    database = folder / "loom.db"
    loom.configure(database=database)
    async with Registry(database) as registry:
        await registry.register(folder / "activity.toml")
    results: dict[str, list[float]] = {"native": [], "wasm": []}
    async with loom.Worker(workflows=[NativeThree, WasmThree], activities=[echo], concurrency=500):
        await rate(NativeThree, 200)
        await rate(WasmThree, 200)
        for _ in range(args.reps):  # interleaved so drift hits both alike
            results["native"].append(await rate(NativeThree, args.workflows))
            results["wasm"].append(await rate(WasmThree, args.workflows))
    loom.configure(database=None)
    native = statistics.median(results["native"])
    wasm = statistics.median(results["wasm"])
    return {"native_wf_per_s": native, "wasm_wf_per_s": wasm, "ratio": wasm / native}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workflows", type=int, default=2000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        figures = asyncio.run(main_async(args, Path(tmp)))
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    print(f"native   {figures['native_wf_per_s']:8.0f} workflows/s (3 native activities)")
    print(f"wasm     {figures['wasm_wf_per_s']:8.0f} workflows/s (3 reactor activities by range)")
    print(f"ratio    {figures['ratio']:8.2f} (target >= 0.70)")


if __name__ == "__main__":
    main()
