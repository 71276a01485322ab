"""What tracing costs: workflow throughput with no SDK, with the SDK tracing to memory, and
(given another checkout) the engine before telemetry, in the same run.

Cases (each rep runs in a fresh subprocess on a fresh SQLite file; reps interleave the cases
so machine noise hits them alike):
  baseline  --baseline SRC: the same workload on another checkout (e.g. main before #21)
  off       this checkout, opentelemetry-api only (no SDK installed: every span a no-op)
  traced    SDK TracerProvider + SimpleSpanProcessor + InMemorySpanExporter: every workflow
            task, activity attempt and start is a span (4 workflow tasks + 3 attempts + 1
            start per workflow)

Each workflow runs 3 native activities; throughput = workflows/s from first start to last
result, worker in the same process. Prints median workflows/s per case and its ratio to off.

Usage: python bench/telemetry.py [--workflows 1000] [--reps 5] [--baseline /work/main] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import asyncio, sys, time
import loom

@loom.activity
async def step(n: int) -> int:
    return n + 1

@loom.workflow(name="BenchTraced")
class BenchTraced(loom.Workflow[dict, dict]):
    @loom.step
    async def run(self, ctx):
        n = ctx.input["n"]
        for _ in range(3):
            n = await ctx.activity(step, n)
        ctx.state.n = n

async def main(db, count, traced):
    exporter = None
    if traced:
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
    loom.configure(database=db)
    async with loom.Worker(workflows=[BenchTraced], activities=[step], poll_interval=0.05):
        warm = await BenchTraced.start({"n": -1})
        await warm.result(timeout=60)
        began = time.perf_counter()
        handles = await asyncio.gather(*(BenchTraced.start({"n": i}) for i in range(count)))
        await asyncio.gather(*(h.result(timeout=600) for h in handles))
        elapsed = time.perf_counter() - began
    spans = len(exporter.get_finished_spans()) if exporter else 0
    print(f"{count / elapsed} {spans}")

asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3] == "traced"))
"""


def run_case(source: Path, case: str, count: int) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(Path(tmp) / "bench.db"), str(count), case],
            cwd=source,
            env={**os.environ, "PYTHONPATH": str(source)},
            capture_output=True,
            text=True,
            check=True,
            timeout=900,
        ).stdout.split()
    return float(out[0]), int(out[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workflows", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--baseline", type=Path, help="another checkout to compare with")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    cases = {"off": (ROOT, "off"), "traced": (ROOT, "traced")}
    if args.baseline:
        cases = {"baseline": (args.baseline.resolve(), "off"), **cases}
    rates: dict[str, list[float]] = {name: [] for name in cases}
    spans: dict[str, int] = {}
    for _ in range(args.reps):
        for name, (source, mode) in cases.items():
            rate, count = run_case(source, mode, args.workflows)
            rates[name].append(rate)
            spans[name] = count
    medians = {name: statistics.median(values) for name, values in rates.items()}
    if args.json:
        print(json.dumps({"median_wf_per_s": medians, "rates": rates, "spans": spans}))
        return
    for name, median in medians.items():
        spread = f"{min(rates[name]):.0f}-{max(rates[name]):.0f}"
        print(
            f"{name:9} {median:8.1f} workflows/s (reps {spread}), "
            f"{median / medians['off']:.3f}x off, {spans[name]} spans"
        )


if __name__ == "__main__":
    main()
