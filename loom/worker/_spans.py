"""Tracing of workflow tasks and activity attempts: the spans, the log fields inside them,
and the trace context stamped on the tasks a workflow task schedules."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

from opentelemetry import context as otel_context
from opentelemetry.trace import SpanKind

from loom import telemetry
from loom._json import JSON
from loom.activation import ACTIVITY_TASK, Activation
from loom.replay import WorkflowRun
from loom.store import (
    ClaimedTask,
    Store,
)


def _workflow_span(
    run: WorkflowRun, parent: JSON, *, is_replay: bool
) -> contextlib.AbstractContextManager[None]:
    """`RunWorkflow:{name}` for one workflow task, in the starter's trace; the workflow's
    log lines inside carry its ids. Only the log fields when no SDK is installed."""
    fields = telemetry.log_context(workflow_id=run.workflow_id, workflow_name=run.compiled.name)
    if not telemetry.is_enabled():
        return fields
    return _traced(
        fields,
        f"RunWorkflow:{run.compiled.name}",
        parent or telemetry.workflow_context(run.workflow_id),
        SpanKind.INTERNAL,
        {
            "loom.workflow.id": run.workflow_id,
            "loom.workflow.name": run.compiled.name,
            "loom.replay": is_replay,
        },
    )


def _activity_span(task: ClaimedTask, name: str) -> contextlib.AbstractContextManager[None]:
    """`RunActivity:{name}` for one attempt, a child of the workflow task that scheduled it;
    log lines inside carry the workflow, activity and attempt."""
    workflow_name = task.payload.get("workflow_name")
    fields = telemetry.log_context(
        workflow_id=task.workflow_id,
        workflow_name=workflow_name,
        activity=name,
        attempt=task.attempt,
    )
    if not telemetry.is_enabled():
        return fields
    attributes: dict[str, str | int | bool] = {
        "loom.workflow.id": task.workflow_id,
        "loom.activity.name": name,
        "loom.activity.attempt": task.attempt,
        "loom.replay": False,
    }
    if isinstance(workflow_name, str):
        attributes["loom.workflow.name"] = workflow_name
    return _traced(
        fields, f"RunActivity:{name}", task.payload.get("trace"), SpanKind.CONSUMER, attributes
    )


@contextlib.contextmanager
def _traced(
    fields: telemetry.log_context,
    name: str,
    parent: JSON | otel_context.Context,
    kind: SpanKind,
    attributes: dict[str, str | int | bool],
) -> Iterator[None]:
    with (
        fields,
        telemetry.tracer().start_as_current_span(
            name,
            context=parent
            if isinstance(parent, otel_context.Context)
            else telemetry.context_of(parent),
            kind=kind,
            attributes=attributes,
            record_exception=False,  # an exception's message may repeat an input
        ),
    ):
        yield


def _stamp_activities(store: Store, run: WorkflowRun, activation: Activation) -> None:
    """Give each new activity task the scheduling span's context and time (task payloads
    only: history stays as it was), so its attempts join the trace on any worker; and each
    child workflow the same context, in its WORKFLOW_STARTED."""
    if not (activation.tasks or activation.children) or not telemetry.is_enabled():
        return
    stamp: dict[str, JSON] = {"scheduled_at": store.now_ms(), "workflow_name": run.compiled.name}
    carrier = telemetry.current_carrier()
    if carrier is not None:
        stamp["trace"] = dict(carrier)
        for index, child in enumerate(activation.children):
            activation.children[index] = dataclasses.replace(child, trace=carrier)
    for index, spec in enumerate(activation.tasks):
        if spec.kind == ACTIVITY_TASK:
            activation.tasks[index] = dataclasses.replace(spec, payload={**spec.payload, **stamp})
