"""The scheduler's scratch copy of the cluster during one `schedule` call.

A `ClusterView` is frozen; while placing requests one after another the scheduler must see
its own earlier decisions (DESIGN.md 3: "update that engine's tok_e"), so it copies the
counters into plain lists indexed by engine / node position. `commit` is the only mutator
(through the shared charge rule, `charges.Charge`);
the copy is thrown away at the end of the call, so the caller's view stays the truth.
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import attrgetter

from dualpath.scheduler.charges import Charge
from dualpath.scheduler.types import ClusterView, ReadPlan, RequestInfo

_SEQ, _TOK, _FREE, _READ_Q = (attrgetter(a) for a in ("seq", "tok", "free_kv_tokens",
                                                      "read_queue_tokens"))


class VirtualCluster:
    """Mutable per-call counters. Engine index = position in `view.engines`.

    The structure (ids, positions, node members, role lists) is the view's `layout`, shared
    and never mutated; only the four counter lists are copied per call.
    """

    __slots__ = (
        "de_engines",
        "engine_ids",
        "engine_node",
        "free",
        "layout",
        "node_ids",
        "node_members",
        "pe_engines",
        "read_q",
        "seq",
        "tok",
    )

    def __init__(self, view: ClusterView) -> None:
        layout = self.layout = view.layout
        engines = view.engines
        self.node_ids = layout.node_ids
        self.engine_ids = layout.engine_ids
        self.engine_node = layout.engine_node
        self.node_members = layout.node_members
        self.pe_engines = layout.pe_engines
        self.de_engines = layout.de_engines
        self.read_q: list[int] = list(map(_READ_Q, view.nodes))
        self.seq: list[int] = list(map(_SEQ, engines))
        self.tok: list[int] = list(map(_TOK, engines))
        self.free: list[int] = list(map(_FREE, engines))

    def commit(self, req: RequestInfo, pe: int, de: int, read: ReadPlan, pe_read_node: int,
               de_read_node: int) -> None:
        """Charge one placed request (`charges.Charge`, by engine / node position)."""
        Charge.apply_placement(self, req, pe, de, pe_read_node, de_read_node, read)

    def charge_engine(self, engine: int, seq: int, tok: int, kv: int) -> None:
        self.seq[engine] += seq
        self.tok[engine] += tok
        self.free[engine] -= kv

    def charge_node(self, node: int, tokens: int) -> None:
        self.read_q[node] += tokens

    def fair_ranks(self, engines: Sequence[int], after_engine_id: int | None) -> list[int]:
        """Tie-break rank of each engine index (only those in `engines` are meaningful).

        The order interleaves nodes (the first engine of every node, then the second, ...)
        and starts just after the engine with id `after_engine_id` (the one that got the
        last request before this call), so equal candidates take turns across calls and
        across nodes instead of the lowest id always winning.
        """
        after = None if after_engine_id is None else self.layout.engine_pos.get(after_engine_id)
        return self.layout.fair_order(engines).ranks(after)

    def node_ranks(self, nodes: Sequence[int], after_node_id: int | None) -> list[int]:
        """Tie-break rank of each node position in `nodes`, starting after `after_node_id`."""
        after = None if after_node_id is None else self.layout.node_pos.get(after_node_id)
        return self.layout.node_order(nodes).ranks(after)
