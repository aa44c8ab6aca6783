"""Round-robin placement: the baseline of basic, layerwise and dualpath-rr (DESIGN.md 6).

Prefill engines are taken in turn with no load limit (the baseline has no α/β classes).
Decode engines are taken in turn, skipping those without room for the request's KV; if no
decode engine has room the request — and, to keep FIFO order, everything behind it — waits
("decode-full"). The read side comes from the configured read policy (PE-only for basic and
layerwise, shorter queue for dualpath-rr).

The only state kept between calls is the two cursors: the engine id each side gave work to
last. The next turn starts after that engine in `ClusterView.engines` order (at the first
engine if it has gone from the view).
"""

from __future__ import annotations

from collections.abc import Sequence

from dualpath.scheduler.config import SchedulerConfig
from dualpath.scheduler.read_path import make_read_policy
from dualpath.scheduler.types import (
    ClusterView,
    Placement,
    RequestInfo,
    ScheduleResult,
    StopReason,
)
from dualpath.scheduler.virtual import VirtualCluster


class RoundRobinPlacement:
    """Mutates only its two cursors; `place` is deterministic given the cursors and inputs."""

    name = "round-robin"

    def __init__(self, config: SchedulerConfig) -> None:
        self._config = config
        self._read = make_read_policy(config.read_policy)
        self.last_pe: int | None = None
        self.last_de: int | None = None

    def place(self, waiting: Sequence[RequestInfo], view: ClusterView) -> ScheduleResult:
        vc = VirtualCluster(view)
        pes, des = vc.pe_engines, vc.de_engines
        if not pes or not des:
            return ScheduleResult((), "no-engines", 0)
        pe_pos = _after(vc.engine_ids, pes, self.last_pe)
        de_pos = _after(vc.engine_ids, des, self.last_de)
        read = self._read
        block = self._config.split_block_tokens
        placements: list[Placement] = []
        for i, req in enumerate(waiting):
            kv = req.decode_kv_tokens
            de = None
            for k in range(len(des)):
                cand = des[(de_pos + k) % len(des)]
                if vc.free[cand] >= kv:
                    de = cand
                    de_pos = (de_pos + k + 1) % len(des)
                    break
            if de is None:
                return self._finish(placements, "decode-full", i)
            pe = pes[pe_pos]
            pe_pos = (pe_pos + 1) % len(pes)
            pe_ni, de_ni = vc.engine_node[pe], vc.engine_node[de]
            plan = read(req, vc.node_ids[pe_ni], vc.node_ids[de_ni], vc.read_q[pe_ni],
                        vc.read_q[de_ni], block)
            vc.commit(req, pe, de, plan, pe_ni, de_ni)
            placements.append(Placement(req.request_id, vc.engine_ids[pe], vc.node_ids[pe_ni],
                                        vc.engine_ids[de], vc.node_ids[de_ni], plan))
            self.last_pe = vc.engine_ids[pe]
            self.last_de = vc.engine_ids[de]
        return self._finish(placements, "queue-drained", len(waiting))

    @staticmethod
    def _finish(placements: list[Placement], reason: StopReason, examined: int) -> ScheduleResult:
        return ScheduleResult(tuple(placements), reason, examined)


def _after(engine_ids: Sequence[int], members: Sequence[int], last_id: int | None) -> int:
    """Position in `members` of the engine after the one with id `last_id` (0 if unknown)."""
    if last_id is None:
        return 0
    for pos, e in enumerate(members):
        if engine_ids[e] == last_id:
            return (pos + 1) % len(members)
    return 0
