"""Decode-engine selection in two phases (DESIGN.md 3, "DE selection").

Phase 1 (`Phase1Router`): each request of the queue, in order, goes to the decode group
(node) with the smallest Σ`tok_e`, counting the requests already routed there; a min-heap
over groups, ties to the group of lower rank (`VirtualCluster.node_ranks`: a rotation that
starts after the group that got the last request of the previous call).

Phase 2 (`phase2_pick`), inside one group: R is the FIFO prefix of the group's routed queue
whose total `len_r` fits the group's free KV memory (ignoring fragmentation), and
Z = z_margin x (Σ_{r∈R} len_r + Σ_e tok_e) / |E|, computed once per schedule call
(`group_targets`). For the head request r, among engines with `free_kv >= len_r`:
the engines with `tok_e + len_r <= Z` are preferred and the one with the fewest `seq_e`
wins (then least `tok_e`, then the lower fair rank, `VirtualCluster.fair_ranks`); if none is
below Z, the (high-token) engine with the least `tok_e` wins (ties: fair rank); if no engine
has room, the group stops for this call.

A scan over one group's engines (8 per node in the paper) is cheaper than any index.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

from dualpath.scheduler.virtual import VirtualCluster


class Phase1Router:
    """Routes requests to decode groups by smallest Σtok_e (groups = node positions)."""

    def __init__(self, vc: VirtualCluster, after_node_id: int | None = None) -> None:
        self.groups: Sequence[int] = vc.layout.decode_groups
        rank = vc.node_ranks(self.groups, after_node_id)
        tok_of = vc.tok.__getitem__
        members = vc.node_members
        self._heap: list[tuple[int, int, int]] = [
            (sum(map(tok_of, members[ni])), rank[ni], ni) for ni in self.groups
        ]
        heapq.heapify(self._heap)

    def route(self, kv_tokens: int) -> int:
        """The group (node position) of the next request; charges it `kv_tokens`."""
        total, rank, ni = self._heap[0]
        heapq.heapreplace(self._heap, (total + kv_tokens, rank, ni))
        return ni


def group_targets(
    vc: VirtualCluster, groups: Sequence[int], routes: Sequence[int], kv_tokens: Sequence[int],
    z_margin: float,
) -> dict[int, float]:
    """Z of every decode group from the routed queue (`routes[i]` = group of request i)."""
    free_of = vc.free.__getitem__
    tok_of = vc.tok.__getitem__
    node_members = vc.node_members
    free_left = {ni: sum(map(free_of, node_members[ni])) for ni in groups}
    fitted = dict.fromkeys(groups, 0)
    closed: set[int] = set()
    for ni, kv in zip(routes, kv_tokens, strict=True):
        if ni in closed:
            continue
        if kv <= free_left[ni]:
            free_left[ni] -= kv
            fitted[ni] += kv
        else:
            closed.add(ni)  # R is a FIFO prefix: the first misfit ends it
    targets: dict[int, float] = {}
    for ni in groups:
        members = node_members[ni]
        load = fitted[ni] + sum(map(tok_of, members))
        targets[ni] = z_margin * load / len(members)
    return targets


def phase2_pick(vc: VirtualCluster, group: int, kv_tokens: int, z: float,
                ranks: list[int] | None = None) -> int | None:
    """The decode engine (index) for the head request of `group`, or None if none has room.

    ranks: tie-break rank per engine index (`VirtualCluster.fair_ranks`; default view order).
    """
    free = vc.free
    tok = vc.tok
    seq = vc.seq
    best_low: tuple[int, int, int, int] | None = None  # (seq, tok, rank, index), tok + len <= Z
    best_high: tuple[int, int, int] | None = None  # (tok, rank, index) among the rest
    for e in vc.node_members[group]:
        if free[e] < kv_tokens:
            continue
        t = tok[e]
        r = ranks[e] if ranks is not None else e
        if t + kv_tokens <= z:
            key = (seq[e], t, r, e)
            if best_low is None or key < best_low:
                best_low = key
        elif best_low is None:
            hkey = (t, r, e)
            if best_high is None or hkey < best_high:
                best_high = hkey
    if best_low is not None:
        return best_low[3]
    if best_high is not None:
        return best_high[2]
    return None
