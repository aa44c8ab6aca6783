"""The full DualPath placement (DESIGN.md 3): PE classes, two-phase DE choice, read side.

For each waiting request, in arrival order:

1. phase 1 routes it to a decode group (smallest Σtok_e); if that group already stopped in
   this call the request is skipped (it stays waiting, later requests may still go ahead
   in other groups — the paper stops phase 2 per group);
2. the prefill engine: C2 with least tok_e, else C3 with least tok_e; if C2 and C3 are
   empty, placing stops ("prefill-full");
3. phase 2 picks the decode engine inside the group (Z rule); if no engine of the group
   has room the group stops (and placing stops when every group has, "decode-full");
4. the read policy picks the side from the two nodes' read queues;
5. the decision is committed to the virtual counters (PE tok/seq, DE tok/seq/free KV, the
   chosen node's read queue) so the next request sees it — C2 engines whose node's queue
   passes α become C3, engines whose tok passes β become C1.

Ties (equal tok_e, equal Σtok_e of groups, equal read queues) never go systematically to a
low id or one side: engines and decode groups are ranked by a rotation that starts after the
ones that got the last request of the previous call (`VirtualCluster.fair_ranks`), and the
read policy alternates tied sides. This cursor state lives here, so every caller of one
`GlobalScheduler` (the runtime, the simulator) sees the same ties broken the same way.

Phase 1's queue is, as in the paper, the global waiting queue — but only the head that
could possibly be placed in this call is routed up front (enough to fill every prefill
engine to β and every decode engine's free memory); if the loop gets further, routing
continues lazily. Z is computed from that routed head.
"""

from __future__ import annotations

from collections.abc import Sequence

from dualpath.scheduler.config import SchedulerConfig
from dualpath.scheduler.decode_select import Phase1Router, group_targets, phase2_pick
from dualpath.scheduler.prefill_select import PrefillSelector
from dualpath.scheduler.read_path import make_read_policy
from dualpath.scheduler.types import (
    ClusterView,
    Placement,
    RequestInfo,
    ScheduleResult,
    StopReason,
)
from dualpath.scheduler.virtual import VirtualCluster


class DualPathPlacement:
    """State: the tie-break cursors (last PE, DE and decode group given work) and the read
    policy's; the same inputs in the same call sequence always give the same decisions."""

    name = "dualpath"

    def __init__(self, config: SchedulerConfig) -> None:
        self._config = config
        self._read = make_read_policy(config.read_policy)
        self.last_pe: int | None = None  # engine id
        self.last_de: int | None = None  # engine id
        self.last_group: int | None = None  # decode node id

    def place(self, waiting: Sequence[RequestInfo], view: ClusterView) -> ScheduleResult:
        cfg = self._config
        vc = VirtualCluster(view)
        if not vc.pe_engines or not vc.de_engines:
            return ScheduleResult((), "no-engines", 0)
        pe_sel = PrefillSelector(vc, cfg.alpha_tokens, cfg.beta_tokens,
                                 vc.fair_ranks(vc.pe_engines, self.last_pe))
        de_rank = vc.fair_ranks(vc.de_engines, self.last_de)
        router = Phase1Router(vc, self.last_group)
        head = _placeable_head(waiting, vc, cfg.beta_tokens, len(router.groups))
        routes = [router.route(r.decode_kv_tokens) for r in waiting[:head]]
        z = group_targets(vc, router.groups, routes, [r.decode_kv_tokens for r in waiting[:head]],
                          cfg.z_margin)
        read = self._read
        block = cfg.split_block_tokens
        node_ids = vc.node_ids
        engine_ids = vc.engine_ids
        engine_node = vc.engine_node
        read_q = vc.read_q
        stopped: set[int] = set()
        n_groups = len(router.groups)
        placements: list[Placement] = []
        reason: StopReason = "queue-drained"
        examined = 0
        for i, req in enumerate(waiting):
            kv = req.decode_kv_tokens
            group = routes[i] if i < head else router.route(kv)
            examined = i + 1
            if group in stopped:
                continue
            pe = pe_sel.peek()
            if pe is None:
                reason = "prefill-full"
                examined = i
                break
            de = phase2_pick(vc, group, kv, z[group], de_rank)
            if de is None:
                stopped.add(group)
                if len(stopped) == n_groups:
                    reason = "decode-full"
                    break
                continue
            pe_ni = engine_node[pe]
            plan = read(req, node_ids[pe_ni], node_ids[group], read_q[pe_ni], read_q[group],
                        block)
            vc.commit(req, pe, de, plan, pe_ni, group)
            pe_sel.refresh(pe)
            placements.append(Placement(req.request_id, engine_ids[pe], node_ids[pe_ni],
                                        engine_ids[de], node_ids[group], plan))
        if placements:
            last = placements[-1]
            self.last_pe, self.last_de, self.last_group = last.pe_engine, last.de_engine, last.de_node
        return ScheduleResult(tuple(placements), reason, examined)


def _placeable_head(waiting: Sequence[RequestInfo], vc: VirtualCluster, beta: int,
                    n_groups: int) -> int:
    """How many requests from the head could at most be placed now (an estimate for Z).

    Prefill side: every open engine (tok <= β) takes work until it passes β, overshooting by
    at most one request each. Decode side: the placed requests must fit the free memory.
    """
    open_tok = [t for t in map(vc.tok.__getitem__, vc.pe_engines) if t <= beta]
    n_open = len(open_tok)
    pe_room = n_open * (beta + 1) - sum(open_tok)  # Σ over open engines of β - tok + 1
    de_room = sum(map(vc.free.__getitem__, vc.de_engines))
    pe_used = 0
    de_used = 0
    pe_head = de_head = len(waiting)
    for i, req in enumerate(waiting):
        pe_used += req.prefill_load_tokens
        de_used += req.decode_kv_tokens
        if pe_used > pe_room and pe_head == len(waiting):
            pe_head = i + n_open
        if de_used > de_room and de_head == len(waiting):
            de_head = i + n_groups
        if i >= min(pe_head, de_head):
            break
    return min(len(waiting), pe_head, de_head)
