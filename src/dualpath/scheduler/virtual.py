"""The scheduler's scratch copy of the cluster during one `schedule` call.

A `ClusterView` is frozen; while placing requests one after another the scheduler must see
its own earlier decisions (DESIGN.md 3: "update that engine's tok_e"), so it copies the
counters into plain lists indexed by engine / node position. `commit` is the only mutator
(through the shared charge rule, `charges.Charge`);
the copy is thrown away at the end of the call, so the caller's view stays the truth.
"""

from __future__ import annotations

from itertools import zip_longest

from dualpath.scheduler.charges import Charge
from dualpath.scheduler.types import ClusterView, ReadPlan, RequestInfo


class VirtualCluster:
    """Mutable per-call counters. Engine index = position in `view.engines`."""

    __slots__ = (
        "de_engines",
        "engine_ids",
        "engine_node",
        "free",
        "node_ids",
        "node_members",
        "pe_engines",
        "read_q",
        "seq",
        "tok",
    )

    def __init__(self, view: ClusterView) -> None:
        nodes = view.nodes
        engines = view.engines
        node_pos = {n.node_id: i for i, n in enumerate(nodes)}
        self.node_ids: list[int] = [n.node_id for n in nodes]
        self.read_q: list[int] = [n.read_queue_tokens for n in nodes]
        self.engine_ids: list[int] = [e.engine_id for e in engines]
        self.engine_node: list[int] = [node_pos[e.node_id] for e in engines]
        self.seq: list[int] = [e.seq for e in engines]
        self.tok: list[int] = [e.tok for e in engines]
        self.free: list[int] = [e.free_kv_tokens for e in engines]
        self.node_members: list[list[int]] = [[] for _ in nodes]
        for i, ni in enumerate(self.engine_node):
            self.node_members[ni].append(i)
        self.pe_engines: list[int] = [i for i, e in enumerate(engines) if e.role == "prefill"]
        self.de_engines: list[int] = [i for i, e in enumerate(engines) if e.role == "decode"]

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

    def fair_ranks(self, engines: list[int], after_engine_id: int | None) -> list[int]:
        """Tie-break rank of each engine index (only those in `engines` are meaningful).

        The order interleaves nodes (the first engine of every node, then the second, ...)
        and starts just after the engine with id `after_engine_id` (the one that got the
        last request before this call), so equal candidates take turns across calls and
        across nodes instead of the lowest id always winning.
        """
        wanted = set(engines)
        lists = [[e for e in members if e in wanted] for members in self.node_members]
        order = [e for tier in zip_longest(*(m for m in lists if m)) for e in tier if e is not None]
        return _rotated_ranks(order, self.engine_ids, after_engine_id, len(self.engine_ids))

    def node_ranks(self, nodes: list[int], after_node_id: int | None) -> list[int]:
        """Tie-break rank of each node position in `nodes`, starting after `after_node_id`."""
        return _rotated_ranks(nodes, self.node_ids, after_node_id, len(self.node_ids))


def _rotated_ranks(order: list[int], ids: list[int], after_id: int | None, size: int) -> list[int]:
    """ranks[i] for i in `order` (indices): position in `order` rotated to start just after
    the index whose id (`ids[index]`) is `after_id` (no rotation when it is not there)."""
    start = 0
    if after_id is not None:
        for pos, index in enumerate(order):
            if ids[index] == after_id:
                start = pos + 1
                break
    ranks = [0] * size
    for pos, index in enumerate(order[start:] + order[:start]):
        ranks[index] = pos
    return ranks
