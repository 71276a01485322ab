"""The seed examples run as written, with a real in-process worker on a SQLite file.

Each example's source is executed verbatim apart from its sleeps, which are shortened (the
test asserts no other line changed): the examples' own `main()` starts the worker, the
workflows, the signals and the progress stream, exactly as a reader would run it.
"""

from __future__ import annotations

import asyncio
import importlib.util
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import loom

EXAMPLES = Path(__file__).parents[2] / "examples"
SLEEP = re.compile(r"(ctx\.sleep\((?:delta=)?)timedelta\([^)]*\)")
SHORT = r"\1timedelta(milliseconds=50)"


def _load(name: str) -> ModuleType:
    """Import examples/<name>.py with its sleeps shortened, and nothing else changed."""
    source = (EXAMPLES / f"{name}.py").read_text()
    shortened = SLEEP.sub(SHORT, source)
    changed = [
        (old, new)
        for old, new in zip(source.splitlines(), shortened.splitlines(), strict=True)
        if old != new
    ]
    assert changed, f"{name}: no sleep to shorten"
    assert all("ctx.sleep(" in old for old, _ in changed), changed
    spec = importlib.util.spec_from_loader(f"seed_example_{name}", loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    module.__file__ = str(EXAMPLES / f"{name}.py")
    sys.modules[spec.name] = module  # type hints resolve through the module's globals
    exec(compile(shortened, module.__file__, "exec"), module.__dict__)
    return module


@pytest.fixture(autouse=True)
def database(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "loom.db"
    loom.configure(database=path)
    yield path
    loom.configure(database=None)


async def _main(module: ModuleType) -> Any:
    async with asyncio.timeout(60):
        return await module.main()


async def test_seed_000_assessment(capsys: pytest.CaptureFixture[str]) -> None:
    module = _load("seed_assessment")
    result = await _main(module)
    assert type(result) is module.AssessmentState
    assert result == {
        "score": 3,
        "feedback": "ann: 3/3 - well done",
        "reviewed_by": "Dr. Lee",
        "stage": "final",
    }
    out = capsys.readouterr().out
    assert "Robin: Robin is waiting for a reviewer (3/3)" in out
    assert out.rstrip().endswith(f"COMPLETED {result}")


async def test_loom_core_order_complete_example(capsys: pytest.CaptureFixture[str]) -> None:
    module = (EXAMPLES / "loom_core_order.py").read_text()
    assert "from loom.core.context import WorkflowContext" in module
    spec = importlib.util.spec_from_file_location("seed_order", EXAMPLES / "loom_core_order.py")
    assert spec is not None and spec.loader is not None
    order = importlib.util.module_from_spec(spec)
    sys.modules["seed_order"] = order
    spec.loader.exec_module(order)  # no sleep in it: run exactly the file
    result = await _main(order)
    assert type(result) is order.OrderState
    assert result == {"paid": True, "receipt": "rcpt-o-1-1250", "email_sent": True}
    assert "COMPLETED: {'paid': True" in capsys.readouterr().out


async def test_loom_core_quiz_complete_example(capsys: pytest.CaptureFixture[str]) -> None:
    module = _load("loom_core_quiz")
    result = await _main(module)
    assert result == {"score": 3, "approved_by": "Ms. Frizzle", "status": "final"}
    out = capsys.readouterr().out
    assert "CANCELED: workflow cancelled: student left the course" in out
