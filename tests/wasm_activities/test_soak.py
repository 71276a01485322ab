"""Soak: thousands of calls mixing hostile and good modules in one process. Every good call must
be correct, every hostile call must fail with its typed error, RSS must stay flat and no thread
may outlive the runtime."""

from __future__ import annotations

import asyncio
import json
import random
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import wasmtime

from tests.wasm_activities.build import BUILD_DIR
from wasm_activities import (
    ActivityTimeout,
    CapabilityDenied,
    InvalidOutput,
    Limits,
    MemoryLimitExceeded,
    OutputTooLarge,
    SandboxError,
    SandboxRuntime,
    WasmTrap,
)

LOOP_WAT = """(module (memory (export "memory") 1)
  (func (export "alloc") (param i32) (result i32) i32.const 64)
  (func (export "run") (param i32 i32) (result i64) (loop br 0) i64.const 0))"""
TRAP_WAT = LOOP_WAT.replace("(loop br 0) i64.const 0", "unreachable")
GARBAGE_WAT = LOOP_WAT.replace("(loop br 0) i64.const 0", "i64.const 5")  # 5 zero bytes


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


Case = Callable[[random.Random], Awaitable[None]]


def make_cases(runtime: SandboxRuntime, wasm_module: Callable[[str], bytes]) -> list[Case]:
    word_count = runtime.prepare(wasm_module("word-count"), "reactor")
    echo = runtime.prepare(wasm_module("echo"), "command")
    chars = runtime.prepare(wasm_module("char-count"), "reactor")
    probe = runtime.prepare(wasm_module("probe.c"), "command")
    bomb = runtime.prepare(wasm_module("memory_bomb.c"), "reactor")
    http = runtime.prepare(wasm_module("http_client.c"), "reactor")
    big = runtime.prepare(wasm_module("big_output.c"), "command")
    loop = runtime.prepare(wasmtime.wat2wasm(LOOP_WAT), "reactor")
    trap = runtime.prepare(wasmtime.wat2wasm(TRAP_WAT), "reactor")
    garbage = runtime.prepare(wasmtime.wat2wasm(GARBAGE_WAT), "reactor")

    async def good_words(rng: random.Random) -> None:
        words = [rng.choice(["a", "ß", "日本", "🎉", "word"]) for _ in range(rng.randint(0, 40))]
        result = await runtime.run(word_count, {"text": " ".join(words)})
        assert result.output["words"] == len(words)

    async def good_echo(rng: random.Random) -> None:
        value = {"n": rng.random(), "s": "é" * rng.randint(0, 100), "l": list(range(5))}
        assert (await runtime.run(echo, value)).output == value

    async def good_chars(rng: random.Random) -> None:
        text = "x" * rng.randint(0, 50)
        result = await runtime.run(chars, text)
        assert result.output["bytes"] == len(json.dumps(text))

    async def escape(rng: random.Random) -> None:
        result = await runtime.run(probe, {"read": "/etc/passwd", "write": "/tmp/loom-soak"})
        assert result.output["read"].startswith("error:")
        assert result.output["write"].startswith("error:")

    async def expect(error: type[SandboxError], call: Awaitable[Any]) -> None:
        with pytest.raises(error):
            await call

    async def hostile_loop(rng: random.Random) -> None:
        await expect(ActivityTimeout, runtime.run(loop, {}, limits=Limits(timeout_ms=20)))

    async def hostile_bomb(rng: random.Random) -> None:
        await expect(MemoryLimitExceeded, runtime.run(bomb, {}, limits=Limits(memory_mb=4)))

    async def hostile_trap(rng: random.Random) -> None:
        await expect(WasmTrap, runtime.run(trap, {}))

    async def hostile_garbage(rng: random.Random) -> None:
        await expect(InvalidOutput, runtime.run(garbage, {}))

    async def hostile_http(rng: random.Random) -> None:
        request = {"request": json.dumps({"url": "http://127.0.0.1:9/"}), "needle_xor": ""}
        await expect(CapabilityDenied, runtime.run(http, request))

    async def hostile_output(rng: random.Random) -> None:
        await expect(OutputTooLarge, runtime.run(big, {}))

    good: list[Case] = [good_words, good_echo, good_chars, escape]
    hostile: list[Case] = [
        hostile_loop,
        hostile_bomb,
        hostile_trap,
        hostile_garbage,
        hostile_http,
        hostile_output,
    ]
    # ~85% good calls, ~15% hostile; timeouts are the costly ones, so they are the rarest
    return good * 9 + hostile * 1 + [hostile_trap, hostile_garbage, hostile_http] * 2


async def soak(calls: int, wasm_module: Callable[[str], bytes]) -> None:
    threads_before = {t.ident for t in threading.enumerate()}
    rng = random.Random(1234)
    runtime = SandboxRuntime(cache_dir=BUILD_DIR.parent / "wasm-artifacts", max_workers=2)
    try:
        cases = make_cases(runtime, wasm_module)
        warmup = max(calls // 10, 50)
        batch = 32
        rss_after_warmup = 0.0
        done = 0
        while done < calls:
            size = min(batch, calls - done)
            await asyncio.gather(*(rng.choice(cases)(rng) for _ in range(size)))
            done += size
            if rss_after_warmup == 0.0 and done >= warmup:
                rss_after_warmup = rss_mb()
        rss_end = rss_mb()
    finally:
        runtime.close()
    leaked = [t for t in threading.enumerate() if t.ident not in threads_before]
    print(
        f"\nsoak: {calls} calls, RSS after warm-up {rss_after_warmup:.1f} MB, "
        f"at end {rss_end:.1f} MB (+{rss_end - rss_after_warmup:.1f} MB), "
        f"threads leaked: {len(leaked)}"
    )
    assert not leaked, f"threads outlived the runtime: {[t.name for t in leaked]}"
    assert rss_end - rss_after_warmup < 64, "RSS grew by more than 64 MB after warm-up"


async def test_soak_small(wasm_module: Callable[[str], bytes]) -> None:
    await soak(400, wasm_module)


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_soak_ten_thousand_mixed_calls(wasm_module: Callable[[str], bytes]) -> None:
    await soak(10_000, wasm_module)
