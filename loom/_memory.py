"""Giving freed memory back to the OS after a burst of workflows.

CPython frees the objects of finished runs, but glibc's malloc keeps the freed heap pages
for reuse, so a worker that once held 100k runs kept most of that RSS for good.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from typing import Any

_libc: Any = None


def give_back() -> bool:
    """Return free heap pages to the OS (glibc `malloc_trim`); False where there is none.

    Blocks for milliseconds on a large heap (ctypes releases the GIL): call it off the loop.
    """
    global _libc
    if not sys.platform.startswith("linux"):
        return False
    if _libc is None:
        name = ctypes.util.find_library("c") or "libc.so.6"
        try:
            _libc = ctypes.CDLL(name)
            _libc.malloc_trim  # noqa: B018  # musl has none: fail here, once
        except (OSError, AttributeError):
            _libc = False
    if _libc is False:
        return False
    return bool(_libc.malloc_trim(0))
