"""Giving freed memory back to the OS after a burst of workflows.

CPython frees the objects of finished runs, but neither allocator hands the pages back by
itself. glibc's malloc keeps freed heap pages for reuse until `malloc_trim` returns them
(page by page, wherever they are). CPython's own small-object allocator (pymalloc) is worse
for a worker: it carves 1 MiB arenas and unmaps one only when every block in it is free. A
burst of 10,000 workflows spreads over ~140 arenas, and the few objects that outlive it
(cache entries made during the burst, a timer, the claim loop's current batch, free lists)
sit one or two per arena: 70 arenas stay mapped, and RSS stays at 2-5x what it was before
the burst, for good. No amount of trimming reaches those pages.

So `loom worker` runs on the C library's malloc (`use_system_allocator`: the process
re-executes itself once with PYTHONMALLOC=malloc before it does anything else), and its
heartbeat trims the heap after a burst (`give_back`). The price is CPU: ~9% more
instructions per workflow (bench/instructions.py). `loom worker --allocator pymalloc` keeps
CPython's allocator, and an explicit PYTHONMALLOC always wins.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os
import sys
from pathlib import Path
from typing import Any, TypeVar, cast

_Table = TypeVar("_Table", bound=dict[Any, Any] | set[Any])

ALLOCATOR_ENV = "PYTHONMALLOC"
"""CPython reads this once, at start-up: the allocator cannot change inside a process."""
_CHOSEN = "_LOOM_SYSTEM_ALLOCATOR"
"""Set by the re-execution: this process runs on malloc because loom asked for it."""

GIVE_BACK_BYTES = 4 << 20
"""Trim once the heap holds at least this much free memory and as much was freed (or RSS grew
by as much) since the last trim: a drained burst is given back within a heartbeat, while a
busy worker, whose free memory is reused at once, is not made to fault its pages back in
again and again."""

SHRINK_FROM_BYTES = 256 << 10
"""A dict or set whose table is at least this big and holds a small fraction of what it
could (see `shrunk`) is copied to one sized for what it holds."""
BYTES_PER_ENTRY = 256
"""Below one entry per this many bytes of table a dict or set is mostly empty slots (a full
table costs ~30-50 bytes per entry)."""

_MAIN = Path(__file__).resolve().with_name("__main__.py")
"""`python -m loom` runs this file (`sys.argv[0]`); the console script is named `loom`."""

_libc: Any = None
_allocator = ""
"""What this process allocates with, as `allocator()` reports it (set once)."""
_rss_after_trim = 0
"""RSS in bytes right after the last trim (per process: the heap is the process's)."""
_free_low = 0
"""The fewest free heap bytes seen since the last trim."""


def _malloc_trim() -> Any:
    """glibc's `malloc_trim`, or None where there is none (not Linux, musl)."""
    global _libc
    if _libc is None:
        _libc = False
        if sys.platform.startswith("linux"):
            name = ctypes.util.find_library("c") or "libc.so.6"
            try:
                library = ctypes.CDLL(name)
                library.malloc_trim  # noqa: B018  # musl has none: fail here, once
                if hasattr(library, "mallinfo2"):  # glibc >= 2.33
                    library.mallinfo2.restype = _MallInfo2
                _libc = library
            except (OSError, AttributeError):
                pass
    return _libc.malloc_trim if _libc else None


def give_back() -> bool:
    """Return free heap pages to the OS (glibc `malloc_trim`); False where there is none.

    Blocks for milliseconds on a large heap (ctypes releases the GIL): call it off the loop.
    """
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd",
            "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost",
        )
    ]  # fmt: skip


def _heap_free() -> int | None:
    """Bytes in glibc's free chunks, every arena (`mallinfo2`, glibc >= 2.33), or None."""
    if _malloc_trim() is None or not hasattr(_libc, "mallinfo2"):
        return None
    return int(_libc.mallinfo2().fordblks)


def _rss() -> int:
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def give_back_if_worth_it() -> bool:
    """`give_back` when it returns at least GIVE_BACK_BYTES' worth, as far as one can tell.

    Worth it: the heap holds GIVE_BACK_BYTES free and either as much was freed since the
    last trim (its free bytes rose above their lowest since) or RSS grew by as much (freed
    pages were touched again). Decided on the heap rather than on how many workflows ran: a
    count of runs missed bursts that drained in steps. Blocks like `give_back`: call it off
    the loop.
    """
    global _rss_after_trim, _free_low
    if _malloc_trim() is None:
        return False
    free, grew = _heap_free(), _rss() - _rss_after_trim
    if free is not None:
        _free_low = min(_free_low, free)
        grew = max(grew, free - _free_low)
        if free < GIVE_BACK_BYTES:
            return False
    if grew < GIVE_BACK_BYTES:
        return False
    trimmed = give_back()
    _rss_after_trim, _free_low = _rss(), free if free is not None else 0
    return trimmed


def _oversized(table: dict[Any, Any] | set[Any]) -> bool:
    size = sys.getsizeof(table)
    return size >= SHRINK_FROM_BYTES and len(table) * BYTES_PER_ENTRY < size


def shrunk(table: _Table) -> _Table:
    """`table` itself, or a copy sized for what it holds now when it is mostly empty slots.

    Dicts and sets never shrink as entries leave: one that held a burst's 100k entries keeps
    megabytes of empty table for as long as it lives, which no trim can give back. `copy()`
    builds a fresh table for what is left (an OrderedDict or defaultdict stays one).
    """
    return cast(_Table, table.copy()) if _oversized(table) else table


def shrink_task_registry() -> None:
    """Shrink asyncio's registry of live tasks (`asyncio.all_tasks` reads it) after a burst.

    It is a WeakSet in which every task ever created took a slot: 100k tasks gathered at
    once leave a 4-8 MiB set with a handful of entries. Cleared and refilled in place
    (`set.clear` frees the table), as it is asyncio's own object and the C tasks hold it.
    Call on the loop's thread between awaits.
    """
    registry = getattr(asyncio.tasks, "_all_tasks", None)
    table = getattr(registry, "data", None)
    if isinstance(table, set) and _oversized(table):
        alive = set(table)
        table.clear()
        table.update(alive)


def allocator() -> str:
    """`malloc` when this process runs on the C library's allocator, else what
    PYTHONMALLOC names (`pymalloc` when unset: CPython's default)."""
    return _allocator or os.environ.get(ALLOCATOR_ENV) or "pymalloc"


def use_system_allocator() -> None:
    """Re-execute this process on glibc's malloc, once, unless it already is on it.

    Call it first thing in a long-lived command, before any thread, file or loop exists:
    `os.execve` keeps the pid, the open standard streams and the arguments
    (`sys.orig_argv`, interpreter options included) and replaces everything else. Nothing
    happens when PYTHONMALLOC is already set (the user's choice wins), where there is no
    `malloc_trim` to give pages back with, or when the program is not loom's CLI
    (`loom ...` or `python -m loom ...`: a command invoked inside another program, such as
    a test runner, must not replace it). The new process removes the variable again, so
    its own child processes get the environment as it was.
    """
    global _allocator
    if os.environ.pop(_CHOSEN, None) is not None:
        os.environ.pop(ALLOCATOR_ENV, None)
        _allocator = "malloc"
        return
    if ALLOCATOR_ENV in os.environ or _malloc_trim() is None:
        return
    program = Path(sys.argv[0])
    if program.name != "loom" and program.resolve() != _MAIN:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    environment = {**os.environ, ALLOCATOR_ENV: "malloc", _CHOSEN: "1"}
    os.execve(sys.executable, sys.orig_argv, environment)
