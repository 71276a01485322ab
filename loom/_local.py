"""In-process execution with no database: the engine of `CompiledWorkflow.execute()`.

Reuses `WorkflowRun` so local runs follow the same rules as durable ones; time is simulated.
"""

from __future__ import annotations

import asyncio
import heapq
import random
import uuid
from collections import deque
from collections.abc import Mapping
from typing import Any

from loom._json import JSON
from loom.activation import TIMER_TASK, Activation, ChildStart
from loom.activity import declared_activity
from loom.definition import WorkflowDefinition, compiled_workflow
from loom.exceptions import LoomError
from loom.history import Event, EventKind, NewEvent, WorkflowStatus, encode_error
from loom.replay import WorkflowRun, decode_error, now_ms


class LocalExecutor:
    """Feeds a run the events a worker would, performing effects inline."""

    def __init__(self, signals: Mapping[str, JSON | list[JSON]]) -> None:
        self._signals = {
            name: deque(value if isinstance(value, list) else [value])
            for name, value in signals.items()
        }
        self._clock = now_ms()
        self._timers: list[tuple[int, str, int]] = []  # (fire_at, workflow_id, seq)

    async def execute(self, compiled: WorkflowDefinition[Any, Any], input: Any) -> Any:
        workflow_id = f"local-{uuid.uuid4()}"
        outcome = await self._run(compiled, compiled.encode_input(input), workflow_id)
        if outcome.status is not WorkflowStatus.COMPLETED:
            raise decode_error(outcome.error or {}, workflow_id)
        return compiled.decode_state(outcome.state or {})

    async def _run(
        self, compiled: WorkflowDefinition[Any, Any], input: JSON, workflow_id: str
    ) -> Activation:
        run = WorkflowRun(compiled, workflow_id)
        seed = random.getrandbits(63)
        inbox: list[tuple[EventKind, dict[str, JSON]]] = [
            (EventKind.WORKFLOW_STARTED, {"input": input, "seed": seed})
        ]
        while True:
            # A run takes only events that continue its own history (see HistoryGapError).
            run.apply(
                [
                    Event(run.cursor + i, kind, payload, self._clock)
                    for i, (kind, payload) in enumerate(inbox, start=1)
                ],
                include_commands=False,
            )
            activation = run.take_activation()
            if activation.status is not WorkflowStatus.RUNNING:
                return activation
            inbox = await self._perform(activation, workflow_id)
            if not inbox:
                raise LoomError(
                    f"workflow {workflow_id!r} ({compiled.name}) is blocked with nothing left to "
                    f"deliver; pass the signals it waits for to execute(signals=...)"
                )

    async def _perform(
        self, activation: Activation, workflow_id: str
    ) -> list[tuple[EventKind, dict[str, JSON]]]:
        results: list[tuple[EventKind, dict[str, JSON]]] = []
        for event in activation.events:
            if event.kind is EventKind.SIGNAL_WAIT_STARTED:
                results.extend(self._signal_for(event))
        for task in activation.tasks:
            if task.kind == TIMER_TASK:
                heapq.heappush(self._timers, (task.run_at, workflow_id, int(task.payload["seq"])))
        cancelled = set(activation.cancel_task_keys)
        self._timers = [t for t in self._timers if f"t:{t[1]}:{t[2]}" not in cancelled]
        heapq.heapify(self._timers)
        outcomes = await asyncio.gather(
            *(self._activity(t.payload) for t in activation.tasks if t.kind != TIMER_TASK),
            *(self._child(child) for child in activation.children),
        )
        results.extend(outcomes)
        mine = [t for t in self._timers if t[1] == workflow_id]
        if not results and mine:
            # Time jumps to this workflow's earliest timer only when nothing else can happen.
            timer = min(mine)
            self._timers.remove(timer)
            heapq.heapify(self._timers)
            self._clock = max(self._clock, timer[0])
            results.append((EventKind.TIMER_FIRED, {"seq": timer[2]}))
        return results

    def _signal_for(self, event: NewEvent) -> list[tuple[EventKind, dict[str, JSON]]]:
        name = str(event.payload["key"])
        queue = self._signals.get(name)
        if queue:
            return [(EventKind.SIGNAL_RECEIVED, {"name": name, "payload": queue.popleft()})]
        return []

    async def _activity(self, task: Mapping[str, JSON]) -> tuple[EventKind, dict[str, JSON]]:
        name = str(task["name"])
        seq = task["seq"]
        activity = declared_activity(name)
        if activity is None:
            raise LoomError(
                f"execute() runs only @loom.activity functions in this process; {name!r} is not "
                f"one (registered WASM activities need a worker: use start())"
            )
        attempt = 0
        while True:
            attempt += 1
            try:
                result = await activity.attempt(task["input"])
            except Exception as err:
                if attempt >= activity.retry.max_attempts or not activity.is_retryable(err):
                    error = encode_error(err, error_type=type(err).__name__)
                    error["details"]["retryable"] = activity.is_retryable(err)
                    return EventKind.ACTIVITY_FAILED, {
                        "seq": seq,
                        "name": name,
                        "error": error,
                        "attempt": attempt,
                    }
                await asyncio.sleep(activity.retry.delay(attempt) * random.uniform(0.8, 1.2))
            else:
                return EventKind.ACTIVITY_COMPLETED, {"seq": seq, "name": name, "result": result}

    async def _child(self, child: ChildStart) -> tuple[EventKind, dict[str, JSON]]:
        compiled = compiled_workflow(child.workflow_name)
        base: dict[str, JSON] = {"seq": child.parent_seq, "workflow_id": child.workflow_id}
        outcome = await self._run(compiled, child.input, child.workflow_id)
        if outcome.status is WorkflowStatus.COMPLETED:
            return EventKind.CHILD_COMPLETED, {**base, "state": outcome.state or {}}
        return EventKind.CHILD_FAILED, {**base, "error": outcome.error}


async def execute_locally(
    compiled: WorkflowDefinition[Any, Any],
    input: Any,
    *,
    signals: Mapping[str, JSON | list[JSON]],
) -> Any:
    """Run a workflow in-process with no database (see `CompiledWorkflow.execute`)."""
    return await LocalExecutor(signals).execute(compiled, input)
