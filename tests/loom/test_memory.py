"""Giving memory back (loom._memory), each case in a fresh interpreter: the allocator is
chosen at start-up, and the heap under test must be that process's alone."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")


def run(code: str, **env: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_drained_heap_is_trimmed_once_and_not_again() -> None:
    out = run(
        """
        import gc
        from loom import _memory
        _memory.give_back_if_worth_it()  # whatever start-up left
        before = _memory._rss()
        held = [{"n": n, "text": str(n) * 3} for n in range(400_000)]
        grown = _memory._rss()
        del held
        gc.collect()
        print(_memory.give_back_if_worth_it(), _memory.give_back_if_worth_it())
        print((grown - before) >> 20, (_memory._rss() - before) >> 20)
        """,
        PYTHONMALLOC="malloc",
    )
    calls, sizes = out.splitlines()
    assert calls == "True False"  # the second found nothing freed since
    grown, kept = map(int, sizes.split())
    assert grown > 60 and kept < grown / 4, (grown, kept)


def test_a_busy_heap_is_left_alone() -> None:
    out = run(
        """
        from loom import _memory
        _memory.give_back_if_worth_it()
        held = [{"n": n} for n in range(400_000)]  # grown, but nothing freed
        print(_memory.give_back_if_worth_it())
        """,
        PYTHONMALLOC="malloc",
    )
    assert out == "False"


def test_the_allocator_is_not_switched_under_another_program() -> None:
    """`python -c` is not loom's CLI: re-executing would replace someone else's process."""
    out = run(
        """
        from loom import _memory
        _memory.use_system_allocator()
        print("still here", _memory.allocator())
        """
    )
    assert out == "still here pymalloc"


def test_an_explicit_pythonmalloc_wins() -> None:
    out = run(
        """
        import sys
        sys.argv[0] = "loom"  # as the console script
        from loom import _memory
        _memory.use_system_allocator()
        print("still here", _memory.allocator())
        """,
        PYTHONMALLOC="pymalloc",
    )
    assert out == "still here pymalloc"


def test_the_cli_re_executes_once_and_hides_the_variable_from_children() -> None:
    out = run(
        """
        import os, subprocess, sys
        sys.argv[0] = "loom"
        from loom import _memory
        _memory.use_system_allocator()  # replaces this process, same pid and arguments
        probe = "import os; print(os.environ.get('PYTHONMALLOC'))"
        child = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
        child = child.stdout.strip()
        print(_memory.allocator(), os.environ.get("PYTHONMALLOC"), child)
        """
    )
    assert out == "malloc None None"


def test_a_mostly_empty_table_is_copied_to_fit_and_a_full_one_kept() -> None:
    from collections import OrderedDict

    from loom._memory import shrunk

    table: OrderedDict[int, int] = OrderedDict((n, n) for n in range(100_000))
    for n in range(99_990):
        del table[n]
    small = shrunk(table)
    assert type(small) is OrderedDict and list(small.items()) == list(table.items())
    assert sys.getsizeof(small) * 100 < sys.getsizeof(table)
    full = {n: n for n in range(100_000)}
    assert shrunk(full) is full
    assert shrunk(small) is small  # small tables are never copied


async def test_the_task_registry_shrinks_and_keeps_the_live_tasks() -> None:
    import asyncio

    from loom._memory import shrink_task_registry

    registry = asyncio.tasks._all_tasks  # type: ignore[attr-defined]
    burst = [asyncio.create_task(asyncio.sleep(0)) for _ in range(30_000)]
    await asyncio.gather(*burst)
    del burst
    await asyncio.sleep(0)  # the loop's last callbacks let go of the tasks
    gc.collect()
    stays = asyncio.create_task(asyncio.sleep(60))
    before = sys.getsizeof(registry.data)
    shrink_task_registry()
    assert sys.getsizeof(registry.data) * 20 < before
    assert stays in asyncio.all_tasks() and asyncio.current_task() in asyncio.all_tasks()
    stays.cancel()
