"""The worker's heap: when the garbage collector runs.

Its young threshold follows the number of live runs the worker holds, which is what a
workflow engine's heap is made of (see GC_OBJECTS_PER_RUN). Giving freed memory back to the
OS is loom._memory's.
"""

from __future__ import annotations

import gc

GC_GEN0_THRESHOLD = 50_000
"""The engine allocates many short-lived objects per workflow (futures, events, handles);
with CPython's default gen-0 threshold of 700 the collector runs every few workflows and
scans every live run, which costs ~30% of throughput at 5k in-flight workflows."""
GC_OBJECTS_PER_RUN = 128
"""While the run cache holds more than GC_GEN0_THRESHOLD / this many runs, the young threshold
grows to this many objects per cached run (up to GC_MAX_THRESHOLD). A young collection looks
at every object allocated since the last one; when those are the parts of live runs (a burst
of 10,000 started at once holds ~50 per workflow) it frees nothing, promotes them all and then
walks them again in a generation-1 collection: the GC share per workflow grew 5x from 1k to
10k in flight. Scaled with the runs held, collections stay as rare per workflow as at 1k; a
finished run is freed by refcounting (WorkflowRun.close), so garbage does not pile up."""
GC_MAX_THRESHOLD = 500_000


class Collector:
    """The young-generation threshold a running worker sets, and gives back when it stops."""

    def __init__(self, tune: bool) -> None:
        self.tune = tune
        self._saved: tuple[int, int, int] | None = None
        self._young = GC_MAX_THRESHOLD  # no fitting until the threshold is raised

    def raise_threshold(self) -> None:
        """See GC_GEN0_THRESHOLD; restored by `restore`. `tune=False` opts out."""
        current = gc.get_threshold()
        if self.tune and current[0] < GC_GEN0_THRESHOLD:
            self._saved = (current[0], current[1], current[2])
            self._young = GC_GEN0_THRESHOLD
            gc.set_threshold(GC_GEN0_THRESHOLD, current[1], current[2])

    def restore(self) -> None:
        if self._saved is not None:
            gc.set_threshold(*self._saved)
            self._saved = None

    def grew(self, runs: int) -> None:
        """The worker now holds `runs` live runs: more room when they outgrew the threshold."""
        if runs * GC_OBJECTS_PER_RUN > self._young:
            self._fit(runs)

    def shrank(self, runs: int) -> None:
        """Called at each heartbeat: once a burst drained, collect as often as before."""
        if runs * GC_OBJECTS_PER_RUN * 4 < self._young:
            self._fit(runs)

    def _fit(self, runs: int) -> None:
        """See GC_OBJECTS_PER_RUN: room for twice the runs held now, or back down."""
        if self._saved is None:
            return
        young = min(max(runs * GC_OBJECTS_PER_RUN * 2, GC_GEN0_THRESHOLD), GC_MAX_THRESHOLD)
        if young != self._young:
            self._young = young
            gc.set_threshold(young, *gc.get_threshold()[1:])
