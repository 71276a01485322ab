"""A first-come bound on work in progress whose cost does not grow with the number waiting."""

from __future__ import annotations

import asyncio
from collections import deque
from types import TracebackType


class Slots:
    """At most `size` holders at once (`async with slots:`), served in arrival order.

    asyncio.Semaphore on Python 3.11 walks its waiters on every acquire (`locked()` asks
    whether any is not cancelled), every release (it skips those already woken) and every
    removal (`deque.remove`): with 9,000 eager starts queued behind MAX_STARTING that was
    ~340 future checks per workflow started. Here a release hands its slot straight to the
    first live waiter, so each acquire and release is O(1), a cancelled waiter is skipped
    once. Invariant: a free slot exists only while no one waits.
    """

    __slots__ = ("_free", "_waiters")

    def __init__(self, size: int) -> None:
        self._free = size
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def __aenter__(self) -> None:
        if self._free > 0:
            self._free -= 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self._release()  # handed a slot as it was cancelled: pass it on
            raise

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._release()

    def _release(self) -> None:
        while self._waiters:
            future = self._waiters.popleft()
            if not future.done():  # not cancelled while it waited
                future.set_result(None)
                return
        self._free += 1
