"""Heartbeat deaths are judged on what the scheduler has read: engines whose frames wait
unread in the control socket (the scheduler itself was starved of CPU) are not dead."""

from __future__ import annotations

from typing import Any

from dualpath.core.config import ClusterConfig
from dualpath.runtime.cluster_metrics import ClusterMetrics
from dualpath.runtime.engine_watch import EngineWatch
from dualpath.runtime.membership import Membership


class _NoProcesses:
    """Remote engines only: no local process ever exits."""

    def poll_dead(self) -> list[int]:
        return []

    def running(self, engine_id: int) -> bool:
        return False


def _watch() -> tuple[EngineWatch, Membership]:
    membership = Membership(ClusterConfig(model="tiny", engine_heartbeat_timeout_s=10.0))
    procs: Any = _NoProcesses()
    return EngineWatch(procs, membership, ClusterMetrics(), "/nonexistent"), membership


def test_silence_counts_only_up_to_the_last_drained_read() -> None:
    watch, membership = _watch()
    for engine_id in (0, 1, 2):
        membership.heard(engine_id, 100.0)
    membership.heard(2, 112.0)
    # 30 s later, but the control socket was last empty at 105 s: nobody is silent yet.
    assert watch.dead([0, 1, 2], 130.0, heard_by_s=105.0) == []
    # Read up to 125 s: engines 0 and 1 really said nothing for 25 s; engine 2 for 13 s.
    assert sorted(watch.dead([0, 1, 2], 130.0, heard_by_s=125.0)) == [0, 1, 2]


def test_without_a_drain_time_silence_is_measured_now() -> None:
    watch, membership = _watch()
    membership.heard(0, 100.0)
    assert watch.dead([0], 109.0) == []
    assert watch.dead([0], 111.0) == [0]
