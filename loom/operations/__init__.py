"""The store's operations, written once for SQLite and PostgreSQL.

Each operation is a coroutine over one `Connection` (see `loom.dialect`), run by the store
inside one transaction (or, for `Mode.STATEMENTS`, as statements that are each whole).
Fencing happens here: a task is held by (lease_owner, attempts), and deleting the task row
under that lease is both the fence and the exactly-once guard.

Lock order (it matters on PostgreSQL, where writers run concurrently): a write on a workflow
locks its `workflows` row before any of its task rows. Claims lock task rows only and never
wait for a workflow row, so the two cannot deadlock; the rare cross-workflow cycle (a child
closing while its parent cancels it) is retried by the PostgreSQL store. Finding a lost lease
after the row is written raises `Rollback`, which undoes the operation's writes.

Where each operation lives (imports flow down this list, never up; a `layers` contract in
pyproject.toml holds it):

- `_commits`: the hot path. `commit_workflow_task`, `create_and_commit`,
  `complete_and_continue`, `complete_task`, `retry_activity`, `append_external`; the
  activation's writes (fences, new tasks, children, closing and cancelling workflows).
- `_actors`: `deliver_message`, `take_reply`, `list_actors`; mailbox delivery and restarts.
- `_schedules`: `put_schedule`, `get_schedule`, `list_schedules`, `due_schedules`,
  `set_schedule_paused`, `delete_schedule`, `fire_schedule`.
- `_suspension`: `suspend_workflow`, `resume_workflow`, `fork_workflow` (`fork_history`).
- `_workflows`: `create_workflow`; the inserts and history appends every writer builds on.
- `_claims`: `claim_tasks` (with histories), `extend_leases`, `release_claims`,
  `release_tasks`.
- `_breakers`: `admit_attempt`, `is_breaker_closed`, `list_breakers`, `reset_breaker`; the
  task payload keys of deferred calls.
- `_views`: `collect_stats`, `llm_token_totals`, `diagnose` (operator views, read-only).
- `_definitions`: `register_definition`, `list_definitions`, `get_definition`.
- `_reads`: `get_workflow(s)`, `get_statuses`, `closed_since`, `list_workflows`, `list_logs`,
  `egress_totals`, `count_tasks`, `task_horizon`, `load_events`.
- `_rows`: what they share: workflow row decoding, `_event`, status predicates.
"""

from __future__ import annotations

from loom.operations._actors import deliver_message, list_actors, take_reply
from loom.operations._breakers import admit_attempt, is_breaker_closed, list_breakers, reset_breaker
from loom.operations._claims import claim_tasks, extend_leases, release_claims, release_tasks
from loom.operations._commits import (
    append_external,
    commit_workflow_task,
    complete_and_continue,
    complete_task,
    create_and_commit,
    retry_activity,
)
from loom.operations._definitions import get_definition, list_definitions, register_definition
from loom.operations._reads import (
    closed_since,
    count_tasks,
    egress_totals,
    get_statuses,
    get_workflow,
    get_workflows,
    list_logs,
    list_workflows,
    load_events,
    task_horizon,
)
from loom.operations._schedules import (
    delete_schedule,
    due_schedules,
    fire_schedule,
    get_schedule,
    list_schedules,
    put_schedule,
    set_schedule_paused,
)
from loom.operations._suspension import fork_workflow, resume_workflow, suspend_workflow
from loom.operations._views import collect_stats, diagnose, llm_token_totals
from loom.operations._workflows import create_workflow

__all__ = [
    "admit_attempt",
    "append_external",
    "claim_tasks",
    "closed_since",
    "collect_stats",
    "commit_workflow_task",
    "complete_and_continue",
    "complete_task",
    "count_tasks",
    "create_and_commit",
    "create_workflow",
    "delete_schedule",
    "deliver_message",
    "diagnose",
    "due_schedules",
    "egress_totals",
    "extend_leases",
    "fire_schedule",
    "fork_workflow",
    "get_definition",
    "get_schedule",
    "get_statuses",
    "get_workflow",
    "get_workflows",
    "is_breaker_closed",
    "list_actors",
    "list_breakers",
    "list_definitions",
    "list_logs",
    "list_schedules",
    "list_workflows",
    "llm_token_totals",
    "load_events",
    "put_schedule",
    "register_definition",
    "release_claims",
    "release_tasks",
    "reset_breaker",
    "resume_workflow",
    "retry_activity",
    "set_schedule_paused",
    "suspend_workflow",
    "take_reply",
    "task_horizon",
]
