"""Loom's error types: one base, structured fields, messages that say what to do next."""

from __future__ import annotations

from typing import Any


class LoomError(Exception):
    """Base class of every error the engine raises on purpose."""


class StoreFullError(LoomError, OSError):
    """The database's disk is full. The operation's transaction was rolled back, so nothing
    of it was written; workers wait and resume once space is freed."""


class WorkflowNotFoundError(LoomError):
    """No workflow with this id exists in the database."""

    def __init__(self, workflow_id: str) -> None:
        self.workflow_id = workflow_id
        super().__init__(
            f"workflow {workflow_id!r} not found; check the id (loom list shows known workflows)"
        )


class WorkflowAlreadyExistsError(LoomError):
    """A workflow id is an idempotency key: reusing it for another workflow type is refused."""

    def __init__(self, workflow_id: str, existing_name: str, requested_name: str) -> None:
        self.workflow_id = workflow_id
        super().__init__(
            f"workflow id {workflow_id!r} already belongs to a {existing_name!r} workflow, "
            f"not {requested_name!r}; choose another id"
        )


class WorkflowStillRunningError(LoomError):
    """`result()` timed out while the workflow was still running."""

    def __init__(self, workflow_id: str, status: str) -> None:
        self.workflow_id = workflow_id
        self.status = status
        hint = "wait longer or check that a worker runs"
        if status == "SUSPENDED":
            hint = (
                f"`loom inspect {workflow_id}` shows why; fix it, then `loom resume {workflow_id}`"
            )
        super().__init__(f"workflow {workflow_id!r} is still {status}; {hint}")


class WorkflowExecutionError(LoomError):
    """The workflow failed; `error_type`/`error_message` come from its history."""

    def __init__(
        self,
        workflow_id: str,
        error_type: str,
        error_message: str,
        details: dict[str, Any] | None = None,
    ) -> None:
        self.workflow_id = workflow_id
        self.error_type = error_type
        self.error_message = error_message
        self.details = details or {}
        super().__init__(f"workflow {workflow_id!r} failed: {error_type}: {error_message}")


class ActivityFailedError(LoomError):
    """An activity exhausted its retries or failed with a non-retryable error."""

    def __init__(
        self,
        activity_name: str,
        error_message: str,
        *,
        error_type: str = "Exception",
        attempt: int = 1,
        retryable: bool = True,
    ) -> None:
        self.activity_name = activity_name
        self.error_message = error_message
        self.error_type = error_type
        self.attempt = attempt
        self.retryable = retryable
        super().__init__(
            f"activity {activity_name!r} failed after {attempt} attempt(s): "
            f"{error_type}: {error_message}"
        )


class ActivityTimeoutError(LoomError):
    """One attempt of a native activity ran past its timeout (retryable)."""

    retryable = True

    def __init__(self, activity_name: str, timeout: float) -> None:
        self.activity_name = activity_name
        self.timeout = timeout
        super().__init__(
            f"activity {activity_name!r} attempt exceeded its {timeout:g}s timeout; "
            f"raise timeout= on @loom.activity if it legitimately needs longer"
        )


class CompensationError(LoomError):
    """A saga's block failed and at least one of its compensations failed too.

    `original` is the exception that triggered the compensations, `failures` the errors of
    the compensations that failed for good (after their retries), in the order they ran.
    Every other compensation still ran.
    """

    def __init__(self, *, original: BaseException, failures: list[Exception]) -> None:
        self.original = original
        self.failures = failures
        names = ", ".join(_describe(failure) for failure in failures)
        super().__init__(
            f"{len(failures)} saga compensation(s) failed ({names}) while undoing "
            f"{type(original).__name__}: {original}; the undone steps need a manual repair "
            f"(the workflow's history lists which compensations completed)"
        )

    def history_details(self) -> dict[str, Any]:
        """What history keeps besides the message, so a handle shows both errors."""
        return {
            "original": {"type": type(self.original).__name__, "message": str(self.original)},
            "failures": [
                {
                    "type": type(f).__name__,
                    "activity_name": getattr(f, "activity_name", None),
                    "message": getattr(f, "error_message", None) or str(f),
                }
                for f in self.failures
            ],
        }


def _describe(failure: Exception) -> str:
    name = getattr(failure, "activity_name", None)
    message = getattr(failure, "error_message", None) or str(failure)
    return f"{name}: {message}" if name else f"{type(failure).__name__}: {message}"


class WorkflowClosedError(LoomError):
    """The workflow has finished and no longer accepts signals."""

    def __init__(self, workflow_id: str, status: str, action: str) -> None:
        self.workflow_id = workflow_id
        self.status = status
        super().__init__(f"workflow {workflow_id!r} is {status}; it cannot {action} any more")


class NonDeterministicWorkflowError(LoomError):
    """Replayed code issued a different command than the history recorded at that position."""

    def __init__(self, workflow_id: str, position: int, expected: str, actual: str) -> None:
        self.workflow_id = workflow_id
        self.position = position
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"workflow {workflow_id!r} is non-deterministic at command #{position}: "
            f"history has {expected}, code issued {actual}; keep old code paths for running "
            f"workflows or start new workflows with a new version"
        )


class DefinitionConflictError(LoomError):
    """A definition version is registered already with other content: versions are
    immutable, so a changed definition needs a new `version`."""

    def __init__(self, name: str, version: str, registered: str, given: str) -> None:
        super().__init__(
            f"definition {name} {version} is registered already with sha256 {registered[:16]}; "
            f"this one is {given[:16]}: versions are immutable, give the change a new version"
        )
        self.name = name
        self.version = version


class WorkflowDefinitionError(LoomError, TypeError):
    """A workflow, step or activity definition breaks a rule; raised at decoration/compile time."""


class StateSerializationError(LoomError, TypeError):
    """A value assigned to workflow state is not JSON-serialisable."""

    def __init__(self, key: str, value: object) -> None:
        self.key = key
        super().__init__(
            f"state[{key!r}] = {value!r} ({type(value).__name__}) is not JSON-serialisable; "
            f"store str/int/float/bool/None, lists and dicts of them"
        )


class WorkflowCancelledError(BaseException):
    """Raised inside workflow code at its next await after `cancel()`.

    A BaseException so that `except Exception` in workflow code does not swallow it.
    """

    def __init__(self, reason: str | None = None) -> None:
        self.reason = reason
        super().__init__(f"workflow cancelled: {reason or 'no reason given'}")


class CancelledWorkflowError(WorkflowCancelledError, LoomError):
    """Raised by `handle.result()` (and `execute()`) for a workflow that was cancelled.

    Outside workflow code nothing needs to get past an `except Exception`, so the client
    raises this subclass, which is both: `except WorkflowCancelledError` catches it as
    before, and so does `except Exception` / `except LoomError` (loom-core's handles raised
    a plain Exception). Inside workflow code cancellation stays a bare
    WorkflowCancelledError, a BaseException that `except Exception` does not swallow.
    """


class ConfigurationError(LoomError, ValueError):
    """An environment variable holds a value Loom cannot use (e.g. `LOOM_MAX_STATE_BYTES=8M`).

    A LoomError so the CLI reports it in one line; a ValueError because it is a bad value.
    """


class PayloadTooLargeError(LoomError, ValueError):
    """A value is larger than the limit for its point of entry (see `loom.Limits`).

    Raised before anything is written, so history never holds an oversized value. The
    message names the value, its size, the limit and how to raise it.
    """

    def __init__(self, *, what: str, size: int, limit: int, field: str) -> None:
        self.what = what
        self.size = size
        self.limit = limit
        self.field = field
        self.env_var = f"LOOM_{field.upper()}"
        super().__init__(
            f"{what} is {_human_bytes(size, exact=True)}, over the {_human_bytes(limit)} "
            f"limit (raise it with {self.env_var} or Limits({field}=...))"
        )


def _human_bytes(size: int, *, exact: bool = False) -> str:
    if size < 1024:
        return f"{size} bytes"
    shown = f"{size / 1024:.1f} KiB" if size < 1024 * 1024 else f"{size / (1024 * 1024):.1f} MiB"
    return f"{shown} ({size} bytes)" if exact else shown


class LLMOutputError(LoomError):
    """`ctx.llm` got no acceptable answer: a structured answer still failed its schema after
    `repair_attempts` repairs, or the model was still calling tools after `max_turns` calls.

    `content` is the model's last answer and `problem` what was wrong with it; both are kept
    in history (`details`), so a handle reports them after any restart.
    """

    def __init__(self, activity: str, problem: str, *, content: str, turns: int) -> None:
        self.activity = activity
        self.problem = problem
        self.content = content
        self.turns = turns
        super().__init__(
            f"model {activity!r} gave no acceptable answer after {turns} call(s): {problem}; "
            f"raise repair_attempts/max_turns, loosen the output schema or change the prompt"
        )

    def history_details(self) -> dict[str, Any]:
        return {"problem": self.problem, "content": self.content, "turns": self.turns}


class CircuitOpenError(LoomError):
    """A call waited for its activity's open circuit breaker longer than its own timeout."""

    retryable = False

    def __init__(self, activity_name: str, waited_ms: int) -> None:
        self.activity_name = activity_name
        self.waited_ms = waited_ms
        super().__init__(
            f"the circuit breaker of activity {activity_name!r} is open for longer than the "
            f"call's own timeout (deferred {waited_ms / 1000:.1f}s so far); its downstream is "
            f"failing (loom activity show {activity_name}); `loom activity reset-breaker "
            f"{activity_name}` closes it"
        )


class BreakerNotFoundError(LoomError):
    """`reset-breaker` named an activity that has no circuit breaker in this database."""

    def __init__(self, activity_name: str, known: list[str]) -> None:
        self.activity_name = activity_name
        shown = ", ".join(known) if known else "none"
        super().__init__(
            f"no circuit breaker for activity {activity_name!r} (breakers: {shown}); "
            "check the name (loom activity list)"
        )


class ScheduleNotFoundError(LoomError):
    """No schedule with this name exists in the database."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"schedule {name!r} not found; `loom schedule list` shows them")


class ScheduleError(LoomError, ValueError):
    """A schedule definition is invalid: a bad cron expression, time zone or policy."""


class UnknownWorkflowError(LoomError):
    """No worker serving this database knows the workflow's name (the workflow suspends)."""

    def __init__(self, workflow_id: str, workflow_name: str, worker_id: str) -> None:
        self.workflow_id = workflow_id
        self.workflow_name = workflow_name
        super().__init__(
            f"workflow {workflow_id!r} is a {workflow_name!r}, which worker {worker_id} does "
            f"not know (nor did another worker take it); deploy a worker with it in "
            f"workflows=[...], then `loom resume {workflow_id}`"
        )


class PoisonPillError(LoomError):
    """A task whose worker died `max_recoveries` times in a row while running it.

    The workflow suspends instead of crashing worker after worker: an activity that
    segfaults, runs out of memory or calls `os._exit` must not take the fleet down.
    """

    def __init__(self, workflow_id: str, task_key: str, what: str, recoveries: int) -> None:
        self.workflow_id = workflow_id
        self.task_key = task_key
        self.recoveries = recoveries
        super().__init__(
            f"{what} (task {task_key}) was running on a worker that died {recoveries} times "
            f"in a row (its lease expired each time); fix what kills the worker, then "
            f"`loom resume {workflow_id}`"
        )


class ActorHandlerError(LoomError):
    """An actor's handler raised (or was not found): what `loom.ask` and `ctx.ask` raise.

    The actor survives; its state keeps the changes the handler made before it raised.
    `error_type` is the handler's exception class name (`UnknownHandlerError` for a handler
    the actor does not have).
    """

    def __init__(
        self, *, actor_type: str, key: str, handler: str, error_type: str, error_message: str
    ) -> None:
        self.actor_type = actor_type
        self.key = key
        self.handler = handler
        self.error_type = error_type
        self.error_message = error_message
        super().__init__(
            f"handler {handler!r} of actor {actor_type}[{key!r}] raised {error_type}: "
            f"{error_message}"
        )
