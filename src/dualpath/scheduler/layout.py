"""The structure of a `ClusterView`: which engines exist, on which node, in which role.

Counters (seq, tok, free KV, read queues) change on every call; the structure changes only
when engines join or leave. `ClusterLayout` holds everything the scheduler derives from the
structure alone — positions, node members, the prefill and decode engine lists and the
interleaved tie-break orders (`fair_order`) — so a caller that builds its next view with
`ClusterView.updated` (the simulator, 1,152 engines, thousands of calls) pays for it once
instead of on every call. Everything here is indexed by position in the view's tuples.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import zip_longest
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dualpath.scheduler.types import EngineState, NodeState


class FairOrder:
    """An interleaved order of some positions (engines or nodes) and each one's place in it.

    `order` lists the positions; `place[p]` is the index of position p in `order` (-1 for a
    position not in it). `ranks(after)` rotates the order to start just after position
    `after` (`None` or a position not in the order: no rotation).
    """

    __slots__ = ("_ranks", "order", "place")

    def __init__(self, order: Sequence[int], size: int) -> None:
        self.order: tuple[int, ...] = tuple(order)
        place = [-1] * size
        for i, p in enumerate(self.order):
            place[p] = i
        self.place: tuple[int, ...] = tuple(place)
        self._ranks: dict[int, list[int]] = {}

    def ranks(self, after: int | None) -> list[int]:
        """rank[p] for every position p of the order (other entries are meaningless).

        Memoised per rotation (at most one list per member): callers must not mutate it.
        """
        m = len(self.order)
        start = 0
        if after is not None and 0 <= after < len(self.place) and self.place[after] >= 0:
            start = (self.place[after] + 1) % m
        ranks = self._ranks.get(start)
        if ranks is None:
            ranks = self._ranks[start] = [(p - start) % m if p >= 0 else 0 for p in self.place]
        return ranks


class ClusterLayout:
    """Positions and groups of one cluster structure (read-only once built)."""

    __slots__ = (
        "_orders",
        "de_engines",
        "decode_groups",
        "engine_ids",
        "engine_node",
        "engine_pos",
        "node_ids",
        "node_members",
        "node_pos",
        "node_roles",
        "pe_engines",
    )

    def __init__(self, engines: Sequence[EngineState], nodes: Sequence[NodeState]) -> None:
        """`engines` and `nodes` must already be validated (`ClusterView.__post_init__`)."""
        self.node_ids: tuple[int, ...] = tuple(n.node_id for n in nodes)
        self.node_roles: tuple[str, ...] = tuple(n.role for n in nodes)
        self.node_pos: dict[int, int] = {nid: i for i, nid in enumerate(self.node_ids)}
        self.engine_ids: tuple[int, ...] = tuple(e.engine_id for e in engines)
        self.engine_pos: dict[int, int] = {eid: i for i, eid in enumerate(self.engine_ids)}
        self.engine_node: tuple[int, ...] = tuple(self.node_pos[e.node_id] for e in engines)
        members: list[list[int]] = [[] for _ in nodes]
        for i, ni in enumerate(self.engine_node):
            members[ni].append(i)
        self.node_members: tuple[tuple[int, ...], ...] = tuple(tuple(m) for m in members)
        self.pe_engines: tuple[int, ...] = tuple(
            i for i, e in enumerate(engines) if e.role == "prefill")
        self.de_engines: tuple[int, ...] = tuple(
            i for i, e in enumerate(engines) if e.role == "decode")
        self.decode_groups: tuple[int, ...] = tuple(
            ni for ni, m in enumerate(self.node_members) if m and self.node_roles[ni] == "decode")
        self._orders: dict[tuple[str, tuple[int, ...]], FairOrder] = {}

    def fair_order(self, engines: Sequence[int]) -> FairOrder:
        """The engines' tie-break order: the first engine (in view order) of every node, then
        the second, ... (so equal candidates alternate across nodes). Memoised."""
        key = ("engines", tuple(engines))
        order = self._orders.get(key)
        if order is None:
            wanted = set(key[1])
            lists = [[e for e in m if e in wanted] for m in self.node_members]
            seq = [e for tier in zip_longest(*(m for m in lists if m)) for e in tier
                   if e is not None]
            order = self._orders[key] = FairOrder(seq, len(self.engine_ids))
        return order

    def node_order(self, nodes: Sequence[int]) -> FairOrder:
        """The given node positions, in the given order, as a `FairOrder`. Memoised."""
        key = ("nodes", tuple(nodes))
        order = self._orders.get(key)
        if order is None:
            order = self._orders[key] = FairOrder(key[1], len(self.node_ids))
        return order
