"""Placement policies by name (read policies live in `read_path.READ_POLICIES`).

A placement policy turns (waiting queue, cluster view) into a `ScheduleResult`; the
`--system` ladder picks one through `SystemSpec.placement`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from dualpath.core.errors import ConfigError
from dualpath.scheduler.config import SchedulerConfig
from dualpath.scheduler.dualpath_policy import DualPathPlacement
from dualpath.scheduler.read_path import READ_POLICIES
from dualpath.scheduler.round_robin import RoundRobinPlacement
from dualpath.scheduler.types import ClusterView, RequestInfo, ScheduleResult


class PlacementPolicy(Protocol):
    """Who calls: `GlobalScheduler.schedule`. Owns nothing of the cluster's state."""

    name: str

    def place(self, waiting: Sequence[RequestInfo], view: ClusterView) -> ScheduleResult:
        """Place requests from the head of `waiting` (arrival order) onto the view's engines."""
        ...


PLACEMENT_POLICIES: dict[str, Callable[[SchedulerConfig], PlacementPolicy]] = {
    "round-robin": RoundRobinPlacement,
    "dualpath": DualPathPlacement,
}

# Every policy name the scheduler knows, by kind.
POLICIES: dict[str, tuple[str, ...]] = {
    "placement": tuple(PLACEMENT_POLICIES),
    "read": tuple(READ_POLICIES),
}


def make_policy(config: SchedulerConfig) -> PlacementPolicy:
    """The placement policy `config.placement` names, built with `config`."""
    try:
        factory = PLACEMENT_POLICIES[config.placement]
    except KeyError:
        raise ConfigError(
            f"unknown placement policy {config.placement!r}; choose one of: "
            f"{', '.join(PLACEMENT_POLICIES)}"
        ) from None
    return factory(config)
