"""Native activities: the `@activity` decorator and the typed definition the engine runs.

Knows how to call the function and (de)serialise its arguments; nothing about history or stores.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, ParamSpec, TypeVar, get_type_hints, overload

from pydantic import TypeAdapter

from loom._json import JSON, type_adapter
from loom.breaker import CircuitBreaker
from loom.exceptions import ActivityTimeoutError, WorkflowDefinitionError

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_ATTEMPTS = 3
DEFAULT_TIMEOUT_SECONDS = 300.0

_declared: dict[str, Activity[..., Any]] = {}


@dataclass(frozen=True, slots=True)
class RetryOptions:
    """How a failed attempt is retried: exponential backoff with jitter, capped."""

    max_attempts: int = DEFAULT_ATTEMPTS
    initial_interval: float = 0.2
    backoff: float = 2.0
    max_interval: float = 60.0
    non_retryable: tuple[type[BaseException], ...] = ()

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based), before jitter."""
        return float(min(self.max_interval, self.initial_interval * self.backoff ** (attempt - 1)))


@dataclass(slots=True)
class Activity(Generic[P, R]):
    """A native activity: an async function plus its name, retry policy and timeout.

    Calling it directly runs the function (handy in tests); inside a workflow use
    `await ctx.activity(fn, *args)` so the call is durable.
    """

    fn: Callable[P, Awaitable[R]]
    name: str
    retry: RetryOptions
    timeout: float
    description: str = ""
    """What it does, for people (registry listings); defaults to the docstring's first line."""
    circuit_breaker: CircuitBreaker | None = None
    """Shared by every worker on the database (see `loom.CircuitBreaker`)."""
    has_own_timeout: bool = False
    """`timeout=` was given: a call deferred by an open breaker waits at most that long."""
    _adapters: tuple[dict[str, TypeAdapter[Any]], TypeAdapter[Any] | None] | None = field(
        default=None, repr=False
    )
    _signature: inspect.Signature | None = field(default=None, repr=False)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Awaitable[R]:
        return self.fn(*args, **kwargs)

    def _resolve(self) -> tuple[dict[str, TypeAdapter[Any]], TypeAdapter[Any] | None]:
        # Hints resolve lazily: at decoration time forward references may not exist yet.
        if self._adapters is None:
            hints = get_type_hints(self.fn)
            returns = hints.pop("return", None)
            params = {name: type_adapter(hint) for name, hint in hints.items()}
            self._adapters = (params, type_adapter(returns) if returns is not None else None)
        return self._adapters

    def encode_arguments(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> JSON:
        """Bind and serialise call arguments to JSON (`{"args": [...], "kwargs": {...}}`)."""
        params, _ = self._resolve()
        if self._signature is None:
            self._signature = inspect.signature(self.fn)
        if not kwargs and len(args) == len(params) == len(self._signature.parameters):
            # Fast path: every parameter given positionally and annotated.
            return {
                name: adapter.dump_python(value, mode="json")
                for (name, adapter), value in zip(params.items(), args, strict=True)
            }
        try:
            bound = self._signature.bind(*args, **kwargs)
        except TypeError as err:
            raise TypeError(f"activity {self.name!r}: {err}") from err
        encoded: dict[str, JSON] = {}
        for name, value in bound.arguments.items():
            adapter = params.get(name)
            encoded[name] = adapter.dump_python(value, mode="json") if adapter else value
        return encoded

    async def invoke(self, arguments: JSON) -> JSON:
        """Rebuild typed arguments from JSON, run the function, return its JSON result."""
        params, returns = self._resolve()
        typed = {
            name: (params[name].validate_python(value) if name in params else value)
            for name, value in arguments.items()
        }
        result = await self.fn(**typed)  # type: ignore[call-arg]  # bound by name from JSON
        return returns.dump_python(result, mode="json") if returns else result

    async def attempt(self, arguments: JSON) -> JSON:
        """One attempt under the per-attempt timeout; ActivityTimeoutError when it runs over."""
        try:
            async with asyncio.timeout(self.timeout):
                return await self.invoke(arguments)
        except TimeoutError as err:
            raise ActivityTimeoutError(self.name, self.timeout) from err

    def is_retryable(self, err: BaseException) -> bool:
        return not isinstance(err, self.retry.non_retryable) and getattr(err, "retryable", True)

    def decode_result(self, value: JSON) -> Any:
        """Turn a recorded JSON result back into the annotated return type."""
        _, returns = self._resolve()
        return returns.validate_python(value) if returns else value

    def input_schema(self) -> dict[str, JSON]:
        """JSON Schema of the arguments object, derived from the type hints."""
        params, _ = self._resolve()
        return {
            "type": "object",
            "properties": {name: adapter.json_schema() for name, adapter in params.items()},
            "required": [
                name
                for name, p in inspect.signature(self.fn).parameters.items()
                if p.default is inspect.Parameter.empty
            ],
        }

    def output_schema(self) -> dict[str, JSON]:
        """JSON Schema of the result, derived from the return annotation."""
        _, returns = self._resolve()
        return returns.json_schema() if returns else {}


@overload
def activity(fn: Callable[P, Awaitable[R]], /) -> Activity[P, R]: ...


@overload
def activity(
    *,
    name: str | None = None,
    description: str | None = None,
    retry: int | None = None,
    retry_count: int | None = None,
    timeout: float | None = None,
    timeout_seconds: float | None = None,
    initial_interval: float = 0.2,
    backoff: float = 2.0,
    max_interval: float = 60.0,
    non_retryable: tuple[type[BaseException], ...] = (),
    circuit_breaker: CircuitBreaker | None = None,
) -> Callable[[Callable[P, Awaitable[R]]], Activity[P, R]]: ...


def activity(
    fn: Callable[P, Awaitable[R]] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    retry: int | None = None,
    retry_count: int | None = None,
    timeout: float | None = None,
    timeout_seconds: float | None = None,
    initial_interval: float = 0.2,
    backoff: float = 2.0,
    max_interval: float = 60.0,
    non_retryable: tuple[type[BaseException], ...] = (),
    circuit_breaker: CircuitBreaker | None = None,
) -> Activity[P, R] | Callable[[Callable[P, Awaitable[R]]], Activity[P, R]]:
    """Declare an async function as a durable activity.

    `retry` is the maximum number of attempts including the first (default 3);
    `retry_count` (loom-core's spelling) counts retries after the first attempt, so
    `retry_count=0` means one attempt and no retry. Give one of them, not both.
    `timeout` (alias `timeout_seconds`) bounds each attempt. Exceptions whose type is in
    `non_retryable` fail the activity at once. `description` is shown in registry
    listings (default: the docstring's first line). `circuit_breaker` stops calling it
    while its downstream fails, for every worker on the database (`loom.CircuitBreaker`).
    """
    if circuit_breaker is not None and not isinstance(circuit_breaker, CircuitBreaker):
        raise TypeError(
            f"circuit_breaker must be a loom.CircuitBreaker(...), got {circuit_breaker!r}"
        )
    if retry is not None and retry_count is not None:
        raise TypeError(
            "give retry= (attempts in all) or retry_count= (retries after the first), not both"
        )
    if retry_count is not None and retry_count < 0:
        raise ValueError(f"retry_count must be >= 0 retries, got {retry_count}")
    attempts = retry if retry_count is None else 1 + retry_count
    per_attempt = timeout if timeout is not None else timeout_seconds
    if attempts is not None and attempts < 1:
        raise ValueError(f"retry must be >= 1 attempt, got {attempts}")
    if per_attempt is not None and per_attempt <= 0:
        raise ValueError(f"timeout must be > 0 seconds, got {per_attempt}")

    def wrap(func: Callable[P, Awaitable[R]]) -> Activity[P, R]:
        if not inspect.iscoroutinefunction(func):
            raise WorkflowDefinitionError(
                f"activity {func.__qualname__} must be an `async def` function"
            )
        declared = Activity(
            fn=func,
            name=name or func.__name__,
            retry=RetryOptions(
                max_attempts=attempts or DEFAULT_ATTEMPTS,
                initial_interval=initial_interval,
                backoff=backoff,
                max_interval=max_interval,
                non_retryable=tuple(non_retryable),
            ),
            timeout=per_attempt or DEFAULT_TIMEOUT_SECONDS,
            description=(
                description
                if description is not None
                else (func.__doc__ or "").strip().split("\n")[0]
            ),
            circuit_breaker=circuit_breaker,
            has_own_timeout=per_attempt is not None,
        )
        _declared[declared.name] = declared
        return declared

    return wrap(fn) if fn is not None else wrap


def declared_activity(name: str) -> Activity[..., Any] | None:
    """The most recently declared `@activity` with this name, for in-process execution."""
    return _declared.get(name)


def declared_activities() -> list[Activity[..., Any]]:
    """Every `@activity` declared in this process, the latest per name (a test
    environment serves them all unless given a list)."""
    return list(_declared.values())
