"""The worker: claims tasks under a lease, advances workflows, runs activities and timers.

`Worker` is the one public name (`loom.Worker`). Where each piece lives (imports flow down
this list, never up; a `layers` contract in pyproject.toml holds it):

- `_worker`: `Worker` itself, whole: lifecycle, the claim loop, the run cache, workflow
  tasks, activity tasks (native and registered), eager starts, heartbeats, hand-backs and
  suspension, circuit-breaker admission, memory; and the constants it reads (`MAX_STARTING`,
  `CLAIM_BATCH`, the defaults ...). A test that patches one patches `loom.worker._worker`,
  where it is read.
- `_spans`: tracing: `RunWorkflow:`/`RunActivity:` spans with their log fields, and the
  trace context stamped on the tasks a workflow task schedules.
- `_activities`: activity-attempt helpers: usage on completions, breaker results and
  policies, the registered version a call runs (`_resolve`), native activities listed in
  the registry, the tool definitions of the TOOLS_ACTIVITY.
- `_runs`: workflow-task helpers: step progress, whether a claim continues a cached run,
  whose code a diverged replay belongs to, stored definitions, poison pills and the error
  a suspension keeps.
- `_outage`: `_backoff` and `_Outage`, which reports a failing store once, not per retry.
- `_slots`: `Slots`, the first-come bound on eager starts (MAX_STARTING), O(1) however many
  wait.
"""

from __future__ import annotations

from loom.worker._worker import Worker

__all__ = ["Worker"]
