"""Backoff, and the claim loop's, heartbeat's and schedule loop's view of a failing store."""

from __future__ import annotations

import logging
import time

logger = logging.getLogger("loom.worker")

STORE_BACKOFF_SECONDS = (0.1, 5.0)
"""First and longest pause of the claim loop while the store fails (a full disk, a database
restart): the worker waits it out and resumes instead of exiting."""


def _backoff(bounds: tuple[float, float], attempt: int) -> float:
    """`first` doubled per attempt after the first, capped at `longest`."""
    first, longest = bounds
    return float(min(longest, first * 2.0 ** min(attempt - 1, 16)))


class _Outage:
    """Reports a failing store once when it starts failing and once when it recovers, not
    on every retry (a full disk would otherwise flood the log it cannot write either)."""

    def __init__(self, doing: str) -> None:
        self._doing = doing
        self._failures = 0
        self._since = 0.0

    def failed(self, err: Exception) -> float:
        """Note one failure; returns how long to wait before the next try."""
        if self._failures == 0:
            self._since = time.monotonic()
            logger.error(
                "the store failed while %s (%s: %s); retrying with backoff until it recovers",
                self._doing,
                type(err).__name__,
                err,
            )
        self._failures += 1
        return _backoff(STORE_BACKOFF_SECONDS, self._failures)

    def recovered(self) -> None:
        if self._failures:
            logger.warning(
                "the store recovered after %.1fs (%d failed attempts at %s)",
                time.monotonic() - self._since,
                self._failures,
                self._doing,
            )
            self._failures = 0
