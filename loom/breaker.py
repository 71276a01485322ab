"""Circuit breakers: the policy users declare and the state machine the store keeps.

Pure decisions over one breaker row (closed → open → half-open → closed/open); the store
runs them inside the transaction that records an attempt, so every worker on the database
sees one state. Knows nothing of SQL, workers or activities.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace

from loom._json import JSON

DEFAULT_FAILURES = 5
DEFAULT_WINDOW_SECONDS = 60.0
DEFAULT_RESET_AFTER_SECONDS = 30.0
PROBE_GRACE_MS = 5_000
"""A half-open probe holds its slot for its timeout plus this; a probe whose worker died
then lets the next attempt probe instead of keeping the breaker half-open forever."""
MIN_RECHECK_MS = 250
"""Shortest deferral while another attempt probes (how soon waiting calls look again)."""


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class CircuitBreaker:
    """Stop calling an activity whose downstream is failing, for every worker at once.

    After `failures` failed attempts (any attempt of any call, retries included) within
    `window` seconds the breaker OPENS: attempts are deferred, not run, and consume no retry
    attempt. After `reset_after` seconds it is HALF-OPEN: one attempt runs as a probe; its
    success closes the breaker, its failure opens it again. A call whose activity declares
    its own `timeout` is deferred at most that long and then fails with `CircuitOpenError`.

    Use it as `@loom.activity(circuit_breaker=loom.CircuitBreaker(failures=5, window=60,
    reset_after=30))`, or `[circuit_breaker]` in an activity manifest.
    """

    failures: int = DEFAULT_FAILURES
    window: float = DEFAULT_WINDOW_SECONDS
    reset_after: float = DEFAULT_RESET_AFTER_SECONDS

    def __post_init__(self) -> None:
        if isinstance(self.failures, bool) or not isinstance(self.failures, int):
            raise TypeError(f"failures must be an int, got {self.failures!r}")
        if self.failures < 1:
            raise ValueError(f"failures must be >= 1 failed attempt, got {self.failures}")
        for name in ("window", "reset_after"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"{name} must be > 0 seconds, got {value!r}")

    @property
    def window_ms(self) -> int:
        return max(1, int(self.window * 1000))

    @property
    def reset_after_ms(self) -> int:
        return max(1, int(self.reset_after * 1000))

    @classmethod
    def from_ms(cls, failures: int, window_ms: int, reset_after_ms: int) -> CircuitBreaker:
        """The policy as manifests spell it (milliseconds)."""
        return cls(failures=failures, window=window_ms / 1000, reset_after=reset_after_ms / 1000)


@dataclass(frozen=True, slots=True)
class BreakerCall:
    """An attempt asking its breaker whether it may run."""

    activity_name: str
    policy: CircuitBreaker
    hold_ms: int
    """How long a probe keeps its slot: the attempt's timeout plus PROBE_GRACE_MS."""
    timeout_ms: int | None = None
    """The call's own timeout: deferred longer than this (since its first deferral), it
    fails with CircuitOpenError instead of waiting on."""


@dataclass(frozen=True, slots=True)
class BreakerResult:
    """An attempt's outcome, recorded with the attempt in one transaction."""

    activity_name: str
    policy: CircuitBreaker
    is_success: bool


@dataclass(frozen=True, slots=True)
class Breaker:
    """One breaker row: what `loom activity show`, `loom stats` and the dashboard show."""

    activity_name: str
    state: BreakerState = BreakerState.CLOSED
    failure_times: tuple[int, ...] = ()
    """Store times of the failed attempts inside the current window (at most `failures`)."""
    opened_at: int | None = None
    probe_key: str | None = None
    probe_until: int | None = None
    times_opened: int = 0
    updated_at: int = 0
    policy: CircuitBreaker | None = field(default=None, compare=False)

    def to_json(self) -> dict[str, JSON]:
        """The stable shape `loom activity show --json`, `loom stats` and the API print."""
        policy = self.policy
        return {
            "activity_name": self.activity_name,
            "state": self.state.value,
            "recent_failures": len(self.failure_times),
            "opened_at": self.opened_at,
            "half_open_at": (
                None
                if self.opened_at is None or policy is None or self.state is not BreakerState.OPEN
                else self.opened_at + policy.reset_after_ms
            ),
            "times_opened": self.times_opened,
            "failures": None if policy is None else policy.failures,
            "window_ms": None if policy is None else policy.window_ms,
            "reset_after_ms": None if policy is None else policy.reset_after_ms,
            "updated_at": self.updated_at,
        }

    def recorded(self, result: BreakerResult, now: int) -> Breaker:
        """The state after an attempt finished with `result`."""
        policy = result.policy
        if result.is_success:
            if self.state is BreakerState.HALF_OPEN:
                return replace(
                    self,
                    state=BreakerState.CLOSED,
                    failure_times=(),
                    probe_key=None,
                    probe_until=None,
                )
            return self
        if self.state is BreakerState.HALF_OPEN:
            return self._opened(now)
        if self.state is BreakerState.OPEN:
            return self  # an attempt that started before it opened: the open period stands
        recent = (*(t for t in self.failure_times if t > now - policy.window_ms), now)
        if len(recent) >= policy.failures:
            return self._opened(now)
        return replace(self, failure_times=recent[-policy.failures :])

    def _opened(self, now: int) -> Breaker:
        return replace(
            self,
            state=BreakerState.OPEN,
            failure_times=(),
            opened_at=now,
            times_opened=self.times_opened + 1,
            probe_key=None,
            probe_until=None,
        )

    def admitted(self, call: BreakerCall, task_key: str, now: int) -> tuple[Breaker, int | None]:
        """(new state, None) when the attempt may run now, else (state, when to ask again)."""
        if self.state is BreakerState.CLOSED:
            return self, None
        if self.state is BreakerState.OPEN:
            assert self.opened_at is not None
            half_open_at = self.opened_at + call.policy.reset_after_ms
            if now < half_open_at:
                return self, half_open_at
        elif self.probe_key != task_key and (self.probe_until or 0) > now:
            # Another attempt is probing: look again soon, and at the latest when its hold ends.
            recheck = max(MIN_RECHECK_MS, call.policy.reset_after_ms // 4)
            return self, min(self.probe_until or now, now + recheck)
        probing = replace(
            self, state=BreakerState.HALF_OPEN, probe_key=task_key, probe_until=now + call.hold_ms
        )
        return probing, None
