"""Helpers of activity attempts: usage on completions, breaker results and policies, the
registered version a call runs, native activities listed in the registry, tool definitions."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from activity_registry import (
    ActivityNotFoundError,
    ActivityVersion,
    CircuitBreakerPolicy,
    CorruptModuleError,
    Registry,
    RetryPolicy,
    parse_spec,
)
from loom._json import JSON
from loom.activity import Activity
from loom.breaker import BreakerResult, CircuitBreaker
from loom.clock import wall_ms
from loom.store import (
    ClaimedTask,
    Store,
)
from loom.usage import llm_usage


def _with_usage(completed: dict[str, JSON]) -> dict[str, JSON]:
    """A completion with the tokens (and cost) of the model call it records, if it is one."""
    record = llm_usage(completed["result"])
    return completed if record is None else {**completed, "llm_usage": record}


def _breaker_result(
    name: str, policy: CircuitBreaker | None, *, is_success: bool
) -> BreakerResult | None:
    return None if policy is None else BreakerResult(name, policy, is_success)


def _breaker_policy(policy: CircuitBreaker | None) -> CircuitBreakerPolicy | None:
    """A native activity's breaker as the registry lists it."""
    if policy is None:
        return None
    return CircuitBreakerPolicy(
        failures=policy.failures,
        window_ms=policy.window_ms,
        reset_after_ms=policy.reset_after_ms,
    )


def _manifest_breaker(activity: ActivityVersion) -> CircuitBreaker | None:
    given = activity.circuit_breaker
    if given is None:
        return None
    return CircuitBreaker.from_ms(given.failures, given.window_ms, given.reset_after_ms)


async def _resolve(store: Store, registry: Registry, task: ClaimedTask) -> ActivityVersion:
    """The version this call runs: the workflow's pin for this spec, else a fresh resolve."""
    pin = task.payload.get("pin")
    if isinstance(pin, dict):
        name, _ = parse_spec(str(task.payload["name"]))
        activity = await registry.get(name, str(pin["version"]))
        if activity.sha256 != pin.get("sha256"):
            raise CorruptModuleError(
                f"{activity.ref} now has sha256 {activity.sha256}, but this workflow is "
                f"pinned to {pin.get('sha256')}; versions must stay immutable"
            )
        return activity
    as_of = task.payload.get("as_of")
    if isinstance(as_of, int):
        # The workflow's clock is the store's; the registry stamps its reads with this
        # process's wall clock, which may have stepped away from it.
        as_of += wall_ms() - store.now_ms()
    spec = str(task.payload["name"])
    try:
        activity = await registry.resolve(spec, as_of_ms=as_of if isinstance(as_of, int) else None)
    except ActivityNotFoundError:
        if not isinstance(as_of, int):
            raise
        # The cached listing may predate a registration made to fix this (then a
        # resume): not finding it is rare enough to read the registry again.
        activity = await registry.resolve(spec)
    if activity.is_native:
        raise ActivityNotFoundError(
            str(task.payload["name"]),
            reason="it is a native activity that no running worker serves",
        )
    return activity


async def _register_natives(registry: Registry, activities: Iterable[Activity[..., Any]]) -> None:
    """List this worker's native activities in the registry (`loom activity list`)."""
    for activity in activities:
        await registry.register_native(
            activity.name,
            description=activity.description,
            input_schema=activity.input_schema(),
            output_schema=activity.output_schema(),
            retry=RetryPolicy(
                max_attempts=activity.retry.max_attempts,
                initial_interval_ms=int(activity.retry.initial_interval * 1000),
                backoff=activity.retry.backoff,
                max_interval_ms=int(activity.retry.max_interval * 1000),
            ),
            circuit_breaker=_breaker_policy(activity.circuit_breaker),
        )


async def _describe_tools(
    registry: Registry, overrides: Mapping[str, Activity[..., Any]], specs: list[str]
) -> list[dict[str, JSON]]:
    """Each spec's tool definition, as the registry resolves it now: the body of
    `Worker._tool_definitions` (the TOOLS_ACTIVITY)."""
    definitions: list[dict[str, JSON]] = []
    for spec in specs:
        name, _ = parse_spec(spec)
        try:
            found = await registry.resolve(spec)
        except ActivityNotFoundError:
            if name not in overrides:
                raise
            double = overrides[name]
            definitions.append(
                {
                    "name": name,
                    "description": double.description,
                    "parameters": {"type": "object"},
                }
            )
            continue
        definitions.append(
            {
                "name": found.name,
                "description": found.description,
                "parameters": found.input_schema,
            }
        )
    return definitions
