"""`Saga`: undo steps that succeeded when a later one fails, as ordinary durable activities.

Knows only the context's activity command; compensations are recorded, retried and recovered
exactly like any other activity, so replay re-issues them at the same positions.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

from loom.activity import Activity
from loom.exceptions import CompensationError, WorkflowCancelledError

if TYPE_CHECKING:
    from loom.context import WorkflowContext

SHIELDED: contextvars.ContextVar[bool] = contextvars.ContextVar("loom_shielded", default=False)
"""Set (per asyncio task, so it reaches tasks started under it) while a saga compensates:
commands issued then run even after a cancel request, and a cancel does not reject them.
Replay meets CANCEL_REQUESTED at the same position, so shielding replays the same."""


@dataclass(frozen=True, slots=True)
class _Compensation:
    activity: Activity[..., Any] | str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]

    @property
    def name(self) -> str:
        return self.activity.name if isinstance(self.activity, Activity) else self.activity


class Saga:
    """Compensations registered so far; `async with ctx.saga() as saga:` makes one.

    On an exception in the block (or a cancellation of the workflow) the compensations run
    in reverse order of registration as durable activities, then the exception propagates.
    A compensation that fails for good (after its own retries) does not stop the others;
    afterwards `loom.CompensationError` is raised carrying the original error and the
    failures. A block that completes runs none of them.
    """

    __slots__ = ("_compensations", "_ctx", "is_parallel")

    def __init__(self, ctx: WorkflowContext[Any, Any], *, parallel: bool = False) -> None:
        self._ctx = ctx
        self._compensations: list[_Compensation] = []
        self.is_parallel = parallel

    def compensate(self, activity: Activity[..., Any] | str, /, *args: Any, **kwargs: Any) -> None:
        """Register the undo of a step that just succeeded: `activity(*args, **kwargs)`.

        `activity` is an `@loom.activity` function or a registered `name@range` (then with
        one JSON input), as for `ctx.activity`. Nothing runs now; the arguments are checked
        here so a mistake surfaces at registration, not during the undo.
        """
        if isinstance(activity, Activity):
            activity.encode_arguments(args, kwargs)
        elif not isinstance(activity, str):
            raise TypeError(
                f"saga.compensate takes an @loom.activity function or a registered name, "
                f"got {activity!r}"
            )
        self._compensations.append(_Compensation(activity, args, dict(kwargs)))

    @property
    def pending(self) -> int:
        """How many compensations would run if the block failed now."""
        return len(self._compensations)

    async def __aenter__(self) -> Saga:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        # Only the workflow's own failures and its cancellation undo: engine unwinds (a replay
        # mismatch, an evicted coroutine being closed) must issue no command at all.
        if isinstance(exc, Exception | WorkflowCancelledError):
            await self.unwind(exc)
        return False

    async def unwind(self, error: BaseException) -> None:
        """Run the registered compensations (newest first) because of `error`, then forget them.

        Raises CompensationError when any of them failed; otherwise returns and the caller
        re-raises `error`.
        """
        todo = list(reversed(self._compensations))
        self._compensations.clear()
        if not todo:
            return
        token = SHIELDED.set(True)  # a cancel must not cut the undo short
        try:
            if self.is_parallel:
                outcomes = await asyncio.gather(
                    *(self._run(item) for item in todo), return_exceptions=True
                )
                failures = [o for o in outcomes if isinstance(o, BaseException)]
            else:
                failures = []
                for item in todo:
                    try:
                        await self._run(item)
                    except Exception as err:  # the next compensation still runs
                        failures.append(err)
        finally:
            SHIELDED.reset(token)
        for failure in failures:
            if not isinstance(failure, Exception):
                raise failure  # an engine unwind inside a compensation is not a failure of it
        if failures:
            raise CompensationError(
                original=error, failures=[f for f in failures if isinstance(f, Exception)]
            ) from error

    def _run(self, item: _Compensation) -> Awaitable[Any]:
        run: Callable[..., Awaitable[Any]] = self._ctx.activity
        self._ctx.logger.info("saga: compensating with %s", item.name)
        return run(item.activity, *item.args, **item.kwargs)
