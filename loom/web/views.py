"""What the dashboard shows, composed from the public store API (no queries of its own).

Pure functions from records and events to JSON-ready dicts, the step graph (Mermaid source)
and the Prometheus text of `/metrics`; the routes in `loom.web.app` only fetch and render.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from loom._json import JSON
from loom.breaker import Breaker, BreakerState
from loom.definition import WorkflowDefinition, compiled_workflow
from loom.history import Event, EventKind, WorkflowStatus
from loom.progress import progress_message
from loom.store import Store, StoreStats, WorkflowRecord
from loom.summary import workflow_json

MAX_PAYLOAD_CHARS = 2000
"""A timeline row shows at most this much of an event's payload (the API gives it whole)."""


def workflow_summary(record: WorkflowRecord) -> dict[str, JSON]:
    """One row of `GET /api/workflows`: the `--json` shape plus the progress message."""
    return {**workflow_json(record), "message": progress_message(record)}


def workflow_detail(record: WorkflowRecord) -> dict[str, JSON]:
    """`GET /api/workflows/{id}`: the summary with input, state, error and history length."""
    return workflow_json(record, full=True)


def compact(value: JSON, limit: int = MAX_PAYLOAD_CHARS) -> str:
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    if len(text) > limit:
        return text[:limit] + f"… ({len(text) - limit} more characters)"
    return text


def pretty(value: JSON) -> str:
    return json.dumps(value, ensure_ascii=False, indent=2, sort_keys=True)


# -- activities in flight, children ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ActivityCall:
    """One activity call of a workflow as its history tells it."""

    seq: int
    name: str
    status: str  # "pending", "completed" or "failed"
    attempt: int | None
    error: str | None
    scheduled_at: int
    finished_at: int | None


def activity_calls(events: Sequence[Event]) -> list[ActivityCall]:
    """Every ACTIVITY_SCHEDULED with its outcome, in history order.

    History records an activity's final outcome only: retries in between (and their errors)
    live in the task row, which the store API does not expose per workflow.
    """
    scheduled: dict[int, Event] = {}
    outcomes: dict[int, Event] = {}
    for event in events:
        if event.kind is EventKind.ACTIVITY_SCHEDULED:
            scheduled[int(event.payload.get("seq", event.sequence))] = event
        elif event.kind in (EventKind.ACTIVITY_COMPLETED, EventKind.ACTIVITY_FAILED):
            outcomes[int(event.payload["seq"])] = event
    calls = []
    for seq, event in scheduled.items():
        outcome = outcomes.get(seq)
        error = None
        attempt: int | None = None
        if outcome is not None:
            raw_attempt = outcome.payload.get("attempt")
            attempt = int(raw_attempt) if isinstance(raw_attempt, int) else None
            failure = outcome.payload.get("error")
            if isinstance(failure, dict):
                error = f"{failure.get('type')}: {failure.get('message')}"
        status = (
            "pending"
            if outcome is None
            else ("failed" if outcome.kind is EventKind.ACTIVITY_FAILED else "completed")
        )
        calls.append(
            ActivityCall(
                seq=seq,
                name=str(event.payload.get("name")),
                status=status,
                attempt=attempt,
                error=error,
                scheduled_at=event.created_at,
                finished_at=None if outcome is None else outcome.created_at,
            )
        )
    return calls


def call_json(call: ActivityCall) -> dict[str, JSON]:
    return {
        "seq": call.seq,
        "name": call.name,
        "status": call.status,
        "attempt": call.attempt,
        "error": call.error,
        "scheduled_at": call.scheduled_at,
        "finished_at": call.finished_at,
    }


USAGE_SAMPLE = 100
"""Activity call counts are read from the histories of this many newest workflows."""
USAGE_TTL_S = 5.0


@dataclass(slots=True)
class Usage:
    """Calls of one activity name: count, failures, schedule-to-close latency (ms)."""

    calls: int = 0
    failures: int = 0
    pending: int = 0
    latencies_ms: list[int] = field(default_factory=list)

    def percentile(self, fraction: float) -> int | None:
        if not self.latencies_ms:
            return None
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def activity_usage(histories: Sequence[Sequence[Event]]) -> dict[str, Usage]:
    usage: dict[str, Usage] = {}
    for events in histories:
        for call in activity_calls(events):
            entry = usage.setdefault(call.name, Usage())
            entry.calls += 1
            if call.status == "failed":
                entry.failures += 1
            elif call.status == "pending":
                entry.pending += 1
            if call.finished_at is not None:
                entry.latencies_ms.append(call.finished_at - call.scheduled_at)
    return dict(sorted(usage.items()))


def usage_json(usage: Usage) -> dict[str, JSON]:
    return {
        "calls": usage.calls,
        "failures": usage.failures,
        "pending": usage.pending,
        "p50_ms": usage.percentile(0.5),
        "p95_ms": usage.percentile(0.95),
    }


class UsageCache:
    """`activity_usage` of the newest `USAGE_SAMPLE` workflows, re-read at most every few
    seconds (the store has no per-activity query: this composes `list_workflows` and
    `list_events`)."""

    def __init__(self) -> None:
        self._at = -USAGE_TTL_S
        self._value: dict[str, Usage] = {}
        self._lock = asyncio.Lock()

    async def get(self, store: Store) -> dict[str, Usage]:
        async with self._lock:
            now = time.monotonic()
            if now - self._at >= USAGE_TTL_S:
                records = await store.list_workflows(limit=USAGE_SAMPLE)
                histories = [await store.list_events(r.workflow_id) for r in records]
                self._value = activity_usage(histories)
                self._at = now
            return self._value


def child_ids(events: Sequence[Event]) -> list[str]:
    return [
        str(event.payload["workflow_id"])
        for event in events
        if event.kind is EventKind.CHILD_STARTED and "workflow_id" in event.payload
    ]


def signal_waits(events: Sequence[Event]) -> list[str]:
    """Names of the signals the workflow waits for now (started waits not yet answered)."""
    waiting: list[str] = []
    received: list[str] = []
    for event in events:
        if event.kind is EventKind.SIGNAL_WAIT_STARTED:
            waiting.append(str(event.payload.get("key")))
        elif event.kind is EventKind.SIGNAL_RECEIVED:
            received.append(str(event.payload.get("name")))
    for name in received:
        if name in waiting:
            waiting.remove(name)
    return waiting


# -- step graphs ------------------------------------------------------------------------------


def known_workflow(name: str) -> WorkflowDefinition[Any, Any] | None:
    try:
        return compiled_workflow(name)
    except LookupError:
        return None


def step_names(record: WorkflowRecord, events: Sequence[Event]) -> list[str]:
    """The workflow's steps: from its definition when loaded (`--app`), else from history."""
    compiled = known_workflow(record.workflow_name)
    if compiled is not None:
        return compiled.step_names()
    started = [str(e.payload.get("key")) for e in events if e.kind is EventKind.STEP_STARTED]
    missing = max(0, record.total_steps - len(started))
    return started + [f"step {len(started) + i + 1}" for i in range(missing)]


def _label(text: str) -> str:
    """A Mermaid node label: quotes and angle brackets as entities (Mermaid decodes them)."""
    for raw, entity in (("&", "#amp;"), ('"', "#quot;"), ("<", "#lt;"), (">", "#gt;")):
        text = text.replace(raw, entity)
    return text.replace("\n", " ")


def definition_json(compiled: WorkflowDefinition[Any, Any]) -> dict[str, JSON]:
    return {
        "name": compiled.name,
        "version": compiled.version,
        "description": compiled.description,
        "agent": compiled.agent,
        "steps": [{"name": s.info.name, "description": s.info.description} for s in compiled.steps],
        "graph": definition_graph(compiled),
    }


def definition_graph(compiled: WorkflowDefinition[Any, Any]) -> str:
    lines = ["flowchart LR", '  start(("start"))']
    previous = "start"
    for index, step in enumerate(compiled.steps):
        text = step.info.name + (f": {step.info.description}" if step.info.description else "")
        lines.append(f'  s{index}["{_label(text)}"]')
        lines.append(f"  {previous} --> s{index}")
        previous = f"s{index}"
    lines += ['  finish(("end"))', f"  {previous} --> finish"]
    return "\n".join(lines)


def run_graph(record: WorkflowRecord, steps: Sequence[str]) -> str:
    """Mermaid flowchart of a run: done steps green, the current one blue (red if failed)."""
    lines = [
        "flowchart LR",
        "  classDef done fill:#d1fadf,stroke:#12b76a",
        "  classDef current fill:#d1e9ff,stroke:#2e90fa,stroke-width:3px",
        "  classDef failed fill:#fee4e2,stroke:#f04438,stroke-width:3px",
        "  classDef waiting fill:#f2f4f7,stroke:#98a2b3",
        '  start(("start"))',
    ]
    previous = "start"
    status = record.status
    for index, name in enumerate(steps):
        if status is WorkflowStatus.COMPLETED or index < record.step_index:
            css = "done"
        elif index == record.step_index:
            css = {
                WorkflowStatus.FAILED: "failed",
                WorkflowStatus.CANCELED: "failed",
                WorkflowStatus.PENDING: "waiting",
            }.get(status, "current")
        else:
            css = "waiting"
        lines.append(f'  s{index}["{_label(name)}"]:::{css}')
        lines.append(f"  {previous} --> s{index}")
        previous = f"s{index}"
    finish = "done" if status is WorkflowStatus.COMPLETED else "waiting"
    lines += [f'  finish(("{status.value.lower()}")):::{finish}', f"  {previous} --> finish"]
    return "\n".join(lines)


def step_states(record: WorkflowRecord, steps: Sequence[str]) -> list[tuple[str, str]]:
    """(name, done|current|failed|waiting) per step, the graph's colours as text."""
    out = []
    for index, name in enumerate(steps):
        if record.status is WorkflowStatus.COMPLETED or index < record.step_index:
            out.append((name, "done"))
        elif index == record.step_index and record.status is WorkflowStatus.RUNNING:
            out.append((name, "current"))
        elif index == record.step_index and record.status.is_closed:
            out.append((name, "failed"))
        else:
            out.append((name, "waiting"))
    return out


# -- metrics --------------------------------------------------------------------------------


def prometheus_text(
    stats: StoreStats,
    tasks: dict[str, int],
    tokens: dict[str, dict[str, int]] | None = None,
    breakers: Sequence[Breaker] = (),
) -> str:
    """The store's counts as Prometheus gauges (no workflow ids in labels), the tokens of
    every recorded model call as counters by model and kind (prompt, completion), and each
    activity's circuit breaker."""
    out = [
        "# HELP loom_workflows Workflows in the database by status.",
        "# TYPE loom_workflows gauge",
    ]
    for status, count in sorted(stats.workflows.items()):
        out.append(f'loom_workflows{{status="{_metric_label(status)}"}} {count}')
    # The workers' counters under the same names, as the database tells them (workflows are
    # never deleted, so these only grow): one scrape of the dashboard covers every worker.
    closed = {"completed": "COMPLETED", "failed": "FAILED"}
    for name, help_text, count in [
        ("started", "Workflows started.", sum(stats.workflows.values())),
        *[(n, f"Workflows {n}.", stats.workflows.get(s, 0)) for n, s in closed.items()],
    ]:
        out += [
            f"# HELP loom_workflow_{name}_total {help_text}",
            f"# TYPE loom_workflow_{name}_total counter",
            f"loom_workflow_{name}_total {count}",
        ]
    out += [
        "# HELP loom_task_backlog Task queue by state (due, scheduled, leased, expired).",
        "# TYPE loom_task_backlog gauge",
    ]
    for kind, count in sorted({**tasks, **stats.tasks}.items()):
        out.append(f'loom_task_backlog{{kind="{_metric_label(kind)}"}} {count}')
    out += [
        "# HELP loom_llm_tokens_total Tokens of recorded LLM calls by model and kind.",
        "# TYPE loom_llm_tokens_total counter",
    ]
    for model, kinds in sorted((tokens or {}).items()):
        for kind, count in sorted(kinds.items()):
            labels = f'model="{_metric_label(model)}",kind="{kind}"'
            out.append(f"loom_llm_tokens_total{{{labels}}} {count}")
    out += [
        "# HELP loom_circuit_breaker_state 1 for the state each activity's breaker is in.",
        "# TYPE loom_circuit_breaker_state gauge",
    ]
    for breaker in breakers:
        name = _metric_label(breaker.activity_name)
        for state in BreakerState:
            is_in = int(breaker.state is state)
            out.append(f'loom_circuit_breaker_state{{activity="{name}",state="{state}"}} {is_in}')
    out += [
        "# HELP loom_circuit_breaker_opened_total Times each activity's breaker opened.",
        "# TYPE loom_circuit_breaker_opened_total counter",
    ]
    for breaker in breakers:
        name = _metric_label(breaker.activity_name)
        out.append(f'loom_circuit_breaker_opened_total{{activity="{name}"}} {breaker.times_opened}')
    out += [
        "# HELP loom_web_up The dashboard answers.",
        "# TYPE loom_web_up gauge",
        "loom_web_up 1",
    ]
    return "\n".join(out) + "\n"


def _metric_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
