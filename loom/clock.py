"""The store's clock: lease expiries, timers and retry times are all judged on one clock.

Why: workers compare lease expiries and due times that other processes wrote. If each process
read its own wall clock, a worker 60 s ahead would take over live leases and run a side effect a
second time, and a wall-clock step (+1 h) would fire every pending timer at once. So each store
keeps one clock for its whole database: a wall time read once from a source every process agrees
on, advanced by the host's monotonic clock, which wall-clock steps and skew do not move.

- SQLite (one host): the anchor is kept in the database per boot of the host; every process on
  the host advances it by the same kernel clock (CLOCK_BOOTTIME), so they agree to the
  millisecond whatever their wall clocks say. A reboot starts a new anchor.
- PostgreSQL (many hosts): the anchor is the server's `clock_timestamp()`, re-read every minute,
  so workers on skewed hosts agree within a network round trip.
"""

from __future__ import annotations

import time
from pathlib import Path

REANCHOR_SECONDS = 60.0
"""How often a PostgreSQL client re-reads the server's clock (bounds drift between hosts)."""

_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
_MONOTONIC = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)


def monotonic_ms() -> float:
    """The host's monotonic clock in ms: shared by every process of one boot, never stepped.

    CLOCK_BOOTTIME (Linux) keeps counting while the machine is suspended, so leases and
    timers do not stretch over a suspend; elsewhere the system-wide monotonic clock.
    """
    return time.clock_gettime(_MONOTONIC) * 1000.0


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def boot_id() -> str:
    """Identifies this boot of the host: a monotonic reading means nothing across reboots."""
    try:
        return _BOOT_ID.read_text().strip()
    except OSError:
        # No boot id (not Linux): the boot time as this host sees it, to the minute.
        return f"boot@{round((time.time() - time.monotonic()) / 60)}"


class StoreClock:
    """Wall-clock milliseconds as the store sees them: an anchor advanced monotonically."""

    def __init__(self, anchor_wall_ms: int, anchor_monotonic_ms: float) -> None:
        self._anchor = (anchor_wall_ms, anchor_monotonic_ms)

    @classmethod
    def local(cls) -> StoreClock:
        """A clock anchored on this process's wall clock now (before a store anchors it)."""
        return cls(wall_ms(), monotonic_ms())

    def now_ms(self) -> int:
        wall, mono = self._anchor
        return wall + int(monotonic_ms() - mono)

    def anchor(self, anchor_wall_ms: int, anchor_monotonic_ms: float) -> None:
        """Follow the store's source of time (a tuple swap: readers on other threads see the
        old anchor or the new one, never half of each)."""
        self._anchor = (anchor_wall_ms, anchor_monotonic_ms)
