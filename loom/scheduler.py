"""Cron schedules: `loom.schedule(...)`, their handles, and the firing pass workers run.

A schedule lives in the store; workers that serve its workflow fire it (see `fire_due`), so
it runs wherever workers run and stops with them. Each tick starts at most one workflow
whatever the number of workers: its id derives from schedule + tick, and the store moves
the schedule to its next tick in the same transaction that starts it.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from loom._json import JSON
from loom.client import get_store
from loom.cron import Catchup, Overlap, Schedule, check_cron, next_tick, plan, tick_workflow_id
from loom.definition import WorkflowDefinition, compiled_workflow
from loom.exceptions import ScheduleError, ScheduleNotFoundError
from loom.store import NewWorkflow, Store

if TYPE_CHECKING:
    from loom.workflow import Workflow

DUE_BATCH = 50
"""Schedules looked at per pass of a worker's schedule loop."""


async def schedule(
    name: str,
    *,
    workflow: type[Workflow[Any, Any]] | WorkflowDefinition[Any, Any],
    cron: str,
    input: Any = None,
    timezone: str = "UTC",
    overlap: str = "skip",
    catchup: str = "one",
    paused: bool = False,
    app: str | None = None,
    database: str | None = None,
) -> ScheduleHandle:
    """Create (or replace) the schedule `name`: start `workflow` with `input` on `cron`.

    `cron` has five fields (minute hour day month weekday) or six with seconds first,
    evaluated in `timezone` (IANA, daylight-saving aware). `overlap="skip"` starts nothing
    while the previous tick's workflow is still open (`"allow"` starts anyway). `catchup`
    says which ticks missed while no worker ran or the schedule was paused are started:
    `"none"`, `"one"` (the latest, default) or `"all"`. Workers serving `workflow` fire it.

    Raises:
        ScheduleError: a bad cron expression, time zone or policy (nothing is written).
    """
    compiled = workflow.compile() if isinstance(workflow, type) else workflow
    if not name or any(c.isspace() for c in name) or "@" in name:
        raise ScheduleError(f"invalid schedule name {name!r}: give a name without spaces or '@'")
    check_cron(cron, timezone)
    policies = (_choice(Overlap, overlap, "overlap"), _choice(Catchup, catchup, "catchup"))
    encoded: JSON = compiled.encode_input(input)
    store = get_store(database)
    record = Schedule(
        name=name,
        cron=cron,
        timezone=timezone,
        workflow_name=compiled.name,
        input=encoded,
        overlap=policies[0],
        catchup=policies[1],
        is_paused=paused,
        next_fire_at=next_tick(cron, timezone, store.now_ms()),
        app=app,
    )
    return ScheduleHandle(await store.put_schedule(record), store, compiled)


def _choice(kind: type[Overlap] | type[Catchup], value: str, option: str) -> Any:
    try:
        return kind(value)
    except ValueError as err:
        allowed = "|".join(member.value for member in kind)
        raise ScheduleError(f"{option} must be one of {allowed}, got {value!r}") from err


async def get_schedule(name: str, *, database: str | None = None) -> ScheduleHandle:
    """The handle of an existing schedule; ScheduleNotFoundError when unknown."""
    store = get_store(database)
    found = await store.get_schedule(name)
    if found is None:
        raise ScheduleNotFoundError(name)
    return ScheduleHandle(found, store)


async def list_schedules(*, database: str | None = None) -> list[Schedule]:
    """Every schedule of the database, by name."""
    return await get_store(database).list_schedules()


class ScheduleHandle:
    """A schedule in the store: its record as last read, and what operators do with it."""

    def __init__(
        self, record: Schedule, store: Store, workflow: WorkflowDefinition[Any, Any] | None = None
    ) -> None:
        self.record = record
        self._store = store
        self._workflow = workflow

    @property
    def name(self) -> str:
        return self.record.name

    async def describe(self) -> Schedule:
        found = await self._store.get_schedule(self.name)
        if found is None:
            raise ScheduleNotFoundError(self.name)
        self.record = found
        return found

    async def pause(self) -> Schedule:
        """Start nothing until resumed."""
        self.record = await self._store.set_schedule_paused(self.name, True)
        return self.record

    async def resume(self) -> Schedule:
        """Fire again; ticks missed while paused are started as `catchup` says (`all`: each
        of them, `one`: the latest, `none`: none)."""
        current = await self.describe()
        after = self._store.now_ms()
        if current.catchup is not Catchup.NONE:
            after = min(after, current.updated_at)  # the pause: what it missed since is due
        upcoming = next_tick(current.cron, current.timezone, after)
        self.record = await self._store.set_schedule_paused(self.name, False, upcoming)
        return self.record

    async def delete(self) -> None:
        """Remove the schedule; workflows it started are left alone."""
        await self._store.delete_schedule(self.name)

    async def trigger(self) -> str:
        """Start the workflow now, outside the cron (paused or not); returns its id."""
        current = await self.describe()
        compiled = self._workflow or _definition(current)
        now = self._store.now_ms()
        spec = _new_workflow(compiled, current, tick_workflow_id(current.name, now))
        await self._store.create_workflow(spec)
        return spec.workflow_id


def _definition(record: Schedule) -> WorkflowDefinition[Any, Any]:
    try:
        return compiled_workflow(record.workflow_name)
    except LookupError as err:
        raise ScheduleError(
            f"workflow {record.workflow_name!r} of schedule {record.name!r} is not defined in "
            f"this process; import its module first (CLI: --app {record.app or 'MODULE'})"
        ) from err


def _new_workflow(
    compiled: WorkflowDefinition[Any, Any], record: Schedule, workflow_id: str
) -> NewWorkflow:
    return NewWorkflow(
        workflow_id=workflow_id,
        workflow_name=compiled.name,
        workflow_version=compiled.version,
        input=record.input,
        state=compiled.initial_state(),
        source_hash=compiled.source_hash,
        total_steps=len(compiled.steps),
        seed=random.getrandbits(63),
        agent=compiled.agent,
    )


async def fire_due(
    store: Store, workflows: Mapping[str, WorkflowDefinition[Any, Any]]
) -> list[str]:
    """One pass of a worker's schedule loop: start what every due schedule of `workflows`
    owes now. Returns the ids this call started (other workers' starts excluded)."""
    if not workflows:
        return []
    started: list[str] = []
    for due in await store.due_schedules(list(workflows), DUE_BATCH):
        fire = plan(due, store.now_ms())
        compiled = workflows[due.workflow_name]
        starts = [_new_workflow(compiled, due, tick_workflow_id(due.name, t)) for t in fire.starts]
        ids = await store.fire_schedule(
            due.name, due.next_fire_at, fire.next_fire_at, starts, fire.skipped
        )
        started += ids
    return started
