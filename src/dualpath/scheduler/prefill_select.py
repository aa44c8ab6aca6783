"""Prefill-engine selection with the classes C1/C2/C3 (DESIGN.md 3, "PE selection").

C1: `tok_e > β` (overloaded, gets nothing). C2: `read_q <= α` and `tok_e <= β`. C3:
`read_q > α` and `tok_e <= β`. A request goes to the C2 engine with the least `tok_e`, else
the C3 engine with the least `tok_e`; when C2 and C3 are both empty placing stops.

Cost: one min-heap per class keyed by (tok_e, engine index) with lazy deletion, so a
decision is O(log engines) rather than a scan. An entry is live only while the engine is in
that class with that tok_e; stale entries are dropped when they reach the top. Ties go to
the engine with the lower rank in `ranks` (`VirtualCluster.fair_ranks`: a rotation across
calls and nodes; view order when not given).
"""

from __future__ import annotations

import heapq

from dualpath.scheduler.virtual import VirtualCluster

C1, C2, C3 = 1, 2, 3


class PrefillSelector:
    """Picks prefill engines over a `VirtualCluster`; call `refresh` after each commit."""

    def __init__(self, vc: VirtualCluster, alpha_tokens: int, beta_tokens: int,
                 ranks: list[int] | None = None) -> None:
        self._vc = vc
        self._alpha = alpha_tokens
        self._beta = beta_tokens
        self._rank = ranks if ranks is not None else list(range(len(vc.engine_ids)))
        self._cls: dict[int, int] = {}
        self._heaps: dict[int, list[tuple[int, int, int]]] = {C2: [], C3: []}
        rank = self._rank
        tok = vc.tok
        # The classes of the module docstring: C1 above β, else C2/C3 by the node's read queue.
        node_cls = [C2 if q <= alpha_tokens else C3 for q in vc.read_q]
        engine_node = vc.engine_node
        cls = self._cls
        heaps = self._heaps
        for e in vc.pe_engines:
            t = tok[e]
            if t > beta_tokens:
                cls[e] = C1
            else:
                c = cls[e] = node_cls[engine_node[e]]
                heaps[c].append((t, rank[e], e))
        for h in self._heaps.values():
            heapq.heapify(h)

    def engine_class(self, e: int) -> int:
        """1, 2 or 3 (C1/C2/C3) as of the last refresh."""
        return self._cls[e]

    def _top(self, c: int) -> int | None:
        heap = self._heaps[c]
        cls = self._cls
        tok = self._vc.tok
        while heap:
            t, _, e = heap[0]
            if cls[e] == c and tok[e] == t:
                return e
            heapq.heappop(heap)
        return None

    def peek(self) -> int | None:
        """The engine the next request would get (does not change anything), or None."""
        e = self._top(C2)
        return e if e is not None else self._top(C3)

    def refresh(self, engine: int) -> None:
        """Re-classify the engines of `engine`'s node after `engine` got work.

        Only that node can have changed: the request added to this engine's `tok_e`, and
        its read (if on the prefill side) to this node's read queue.
        """
        vc = self._vc
        cls = self._cls
        tok = vc.tok
        ni = vc.engine_node[engine]
        node_cls = C2 if vc.read_q[ni] <= self._alpha else C3
        beta = self._beta
        for m in vc.node_members[ni]:
            old = cls[m]
            if old == C1:
                continue  # tok_e only grows within a call: C1 is final
            c = C1 if tok[m] > beta else node_cls
            if c != old or m == engine:
                cls[m] = c
                if c != C1:
                    heapq.heappush(self._heaps[c], (tok[m], self._rank[m], m))
