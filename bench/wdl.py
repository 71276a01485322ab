"""Declarative workflows: what CEL costs per evaluation, and a definition's overhead over the
same steps written in Python.

Cases (one process; durable SQLite for the workflow cases):
  cel        one compiled CEL condition over a nested object, per evaluation
  crowded    the same condition with 50 other step outputs in scope (only read names pass)
  template   rendering the onboarding example's largest step input (5 templates)
  python     N workflows of 3 native activities written as a Python class
  definition N workflows of the same 3 activities as a definition (loom.wdl.load)

Usage: python bench/wdl.py [--workflows 300] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import loom
import loom.wdl
from loom._expression import evaluate, render


@loom.activity(name="bench-add")
async def add(a: int, b: int) -> int:
    return a + b


@loom.workflow(name="bench-python")
class ThreeAdds(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
    @loom.step
    async def run(self, ctx):  # type: ignore[no-untyped-def]
        ctx.state.x = await ctx.activity(add, ctx.input["n"], 1)
        ctx.state.y = await ctx.activity(add, ctx.state.x, 2)
        ctx.state.z = await ctx.activity(add, ctx.state.y, 3)


DEFINITION = loom.wdl.load(
    {
        "name": "bench-definition",
        "steps": [
            {
                "id": "x",
                "type": "activity",
                "activity": "bench-add",
                "input": {"a": "{{ n }}", "b": 1},
                "output": "x",
            },
            {
                "id": "y",
                "type": "activity",
                "activity": "bench-add",
                "input": {"a": "{{ x }}", "b": 2},
                "output": "y",
            },
            {
                "id": "z",
                "type": "activity",
                "activity": "bench-add",
                "input": {"a": "{{ y }}", "b": 3},
                "output": "z",
            },
        ],
    }
)


def _per_call_us(fn: object, count: int) -> float:
    began = time.perf_counter()
    for _ in range(count):
        fn()  # type: ignore[operator]
    return (time.perf_counter() - began) / count * 1e6


async def _workflows(compiled: loom.CompiledWorkflow, count: int) -> float:  # type: ignore[type-arg]
    began = time.perf_counter()
    async with loom.Worker(workflows=[compiled], activities=[add], poll_interval=0.05):
        handles = [await compiled.start({"n": n}) for n in range(count)]
        for handle in handles:
            await handle.result(timeout=300)
    return count / (time.perf_counter() - began)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workflows", type=int, default=300)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    variables = {"userInfo": {"plan": "pro", "email": "a@b"}, "billing": {"monthly_total": 120.5}}
    condition = "userInfo.plan == 'enterprise' || billing.monthly_total > 100.0"
    evaluate(condition, variables)
    step_input = {
        "to": "{{ userInfo.email }}",
        "subject": "Welcome {{ userInfo.email }}, your plan is {{ userInfo.plan }}",
        "variables": {"total": "{{ billing.monthly_total }}", "key": "{{secret:API_KEY}}"},
        "big": "{{ billing.monthly_total > 100.0 }}",
    }
    figures: dict[str, float] = {
        "cel_us": _per_call_us(lambda: evaluate(condition, variables), 5000),
        "template_us": _per_call_us(lambda: render(step_input, variables), 2000),
    }
    crowded = {**variables, **{f"step{i}": {"rows": list(range(50))} for i in range(50)}}
    figures["cel_crowded_us"] = _per_call_us(lambda: evaluate(condition, crowded), 5000)
    with tempfile.TemporaryDirectory() as folder:
        loom.configure(database=Path(folder) / "python.db")
        figures["python_wf_per_s"] = await _workflows(ThreeAdds.compile(), args.workflows)
        loom.configure(database=Path(folder) / "definition.db")
        figures["definition_wf_per_s"] = await _workflows(DEFINITION, args.workflows)
    if args.json:
        print(json.dumps(figures))
        return
    print(f"CEL condition          {figures['cel_us']:8.1f} us/evaluation")
    print(f"CEL, 50 other outputs  {figures['cel_crowded_us']:8.1f} us/evaluation")
    print(f"step input (5 tmpl)    {figures['template_us']:8.1f} us/render")
    print(f"Python workflow        {figures['python_wf_per_s']:8.1f} workflows/s (3 activities)")
    print(f"definition             {figures['definition_wf_per_s']:8.1f} workflows/s (same steps)")


if __name__ == "__main__":
    asyncio.run(main())
