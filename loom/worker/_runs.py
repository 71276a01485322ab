"""Helpers of workflow tasks: step progress, whether a claim continues a cached run, whose
code a diverged replay belongs to, stored definitions, and the errors a suspension keeps."""

from __future__ import annotations

from typing import Any

from loom._json import JSON
from loom.activation import ACTIVITY_TASK, TIMER_TASK
from loom.definition import WorkflowDefinition
from loom.exceptions import (
    NonDeterministicWorkflowError,
    PoisonPillError,
)
from loom.history import (
    COMMAND_KINDS,
    encode_error,
)
from loom.replay import WorkflowRun
from loom.store import (
    ClaimedTask,
    StepProgress,
    Store,
)


def _step_progress(compiled: WorkflowDefinition[Any, Any], step_index: int) -> StepProgress:
    info = compiled.steps[min(step_index, len(compiled.steps) - 1)].info
    return StepProgress(info.name, info.description)


def _continues(run: WorkflowRun, task: ClaimedTask, epoch: int) -> bool:
    """Whether the claim's events continue the cached `run`.

    Same epoch: nothing committed since the run did. A claim made while the run's commit
    was in flight loaded from the cursor the run had before it; what lies between that and
    the run's cursor now must be the run's own commands (anything else would be news the
    run never saw)."""
    if task.is_full_history or run.epoch != epoch or run.cursor < task.history_after:
        return False
    return all(e.kind in COMMAND_KINDS for e in task.events or () if e.sequence <= run.cursor)


def _foreign_code(
    run: WorkflowRun, compiled: WorkflowDefinition[Any, Any], current_code: str
) -> str | None:
    """The source_hash of the other code a replay diverged from, or None.

    Non-determinism under code other than the code that last ran the workflow is a deploy
    question, not a workflow bug: the same code replaying differently still fails."""
    code = current_code or run.started_by
    if isinstance(run.failure, NonDeterministicWorkflowError) and code != compiled.source_hash:
        return code or None
    return None


async def _stored_definition(
    store: Store, name: str, source_hash: str
) -> WorkflowDefinition[Any, Any] | None:
    """A declarative definition registered in the database (`loom wdl register`), in the
    exact version the workflow started with: so a worker needs no `--app` for them, and
    registering a new version never changes a running workflow's code."""
    from loom import wdl  # the definition language only when one is met

    return await wdl.pinned(store, name, source_hash)


def _poison(task: ClaimedTask) -> PoisonPillError:
    what = f"workflow code of {task.workflow_id!r}"
    if task.kind == ACTIVITY_TASK:
        what = f"activity {task.payload.get('name')!r}"
    elif task.kind == TIMER_TASK:
        what = "a timer"
    return PoisonPillError(task.workflow_id, task.task_key, what, task.recoveries)


def _suspension_error(
    err: Exception, task: ClaimedTask, worker_id: str, max_chars: int
) -> dict[str, JSON]:
    """The error a suspended workflow keeps: `err` with the task, attempt and worker, and the
    details its type carries (which activity, spec, workflow or crash count)."""
    error = encode_error(
        err, max_chars=max_chars, task=task.task_key, attempt=task.attempt, worker=worker_id
    )
    for key in ("activity_name", "spec", "workflow_name", "recoveries"):
        if hasattr(err, key):
            error["details"][key] = getattr(err, key)
    return error
