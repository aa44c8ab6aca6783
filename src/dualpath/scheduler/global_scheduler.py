"""`GlobalScheduler`: the one object the runtime and the simulator drive.

Call `schedule(waiting, view)` whenever decisions are wanted (a group leader pulled, a
request arrived, a timer fired — the caller decides). The caller owns reality: it passes
the waiting queue in arrival order and a fresh `ClusterView`; it applies the returned
placements (removes those requests from its queue, charges the engines and read queues)
before the next call. Nothing in the view is remembered between calls; the only state
kept is the round-robin baseline's cursors.
"""

from __future__ import annotations

from collections.abc import Sequence

from dualpath.scheduler.config import SchedulerConfig
from dualpath.scheduler.registry import make_policy
from dualpath.scheduler.types import ClusterView, RequestInfo, ScheduleResult


class GlobalScheduler:
    """Placement + read-path choice for a whole PD cluster (DESIGN.md 3)."""

    def __init__(self, config: SchedulerConfig | None = None) -> None:
        self.config = config if config is not None else SchedulerConfig()
        self._policy = make_policy(self.config)

    @property
    def policy_name(self) -> str:
        return self._policy.name

    def schedule(self, waiting: Sequence[RequestInfo], view: ClusterView) -> ScheduleResult:
        """Place requests from the head of `waiting` (arrival order); see `ScheduleResult`."""
        return self._policy.place(waiting, view)
