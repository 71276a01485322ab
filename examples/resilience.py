"""Circuit breaker and schedule example (README "Circuit breakers" and "Schedules").

`check` calls a flaky downstream behind a breaker shared by every worker; `Heartbeat` is the
workflow a cron schedule starts. Run `loom worker --app examples.resilience`.
"""

from __future__ import annotations

import os

import loom


@loom.activity(retry=3, circuit_breaker=loom.CircuitBreaker(failures=5, window=60, reset_after=30))
async def check(service: str) -> str:
    """Calls the downstream; fails while LOOM_EXAMPLE_DOWN is set (to watch the breaker)."""
    if os.environ.get("LOOM_EXAMPLE_DOWN"):
        raise ConnectionError(f"{service} is down")
    return f"{service} is up"


@loom.workflow(name="Heartbeat")
class Heartbeat(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
    """Checks one service; a schedule starts it every few minutes."""

    @loom.step(description="checking the service")
    async def probe(self, ctx):  # type: ignore[no-untyped-def]
        ctx.state.result = await ctx.activity(check, ctx.input["service"])
