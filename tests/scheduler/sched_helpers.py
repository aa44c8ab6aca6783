"""Helpers shared by the scheduler tests: compact cluster views and a decision replayer."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from dualpath.scheduler import ClusterView, EngineState, NodeState, RequestInfo, ScheduleResult


def make_view(
    pe_nodes: Sequence[Sequence[int]],
    de_nodes: Sequence[Sequence[tuple[int, int]]],
    pe_read_q: Sequence[int] | None = None,
    de_read_q: Sequence[int] | None = None,
    seqs: dict[int, int] | None = None,
) -> ClusterView:
    """Prefill nodes as lists of engine tok; decode nodes as lists of (tok, free_kv_tokens).

    Node ids: prefill nodes 0..P-1, decode nodes P..; engine ids count up in that order.
    `seqs` overrides seq_e by engine id (default: 0).
    """
    seqs = seqs or {}
    nodes: list[NodeState] = []
    engines: list[EngineState] = []
    eid = 0
    for i, toks in enumerate(pe_nodes):
        nodes.append(NodeState(i, "prefill", pe_read_q[i] if pe_read_q else 0))
        for t in toks:
            engines.append(EngineState(eid, i, "prefill", seqs.get(eid, 0), t, 0))
            eid += 1
    for j, members in enumerate(de_nodes):
        nid = len(pe_nodes) + j
        nodes.append(NodeState(nid, "decode", de_read_q[j] if de_read_q else 0))
        for t, free in members:
            engines.append(EngineState(eid, nid, "decode", seqs.get(eid, 0), t, free))
            eid += 1
    return ClusterView.build(engines, nodes)


def reqs(*prompt_cached: tuple[int, int], reserve: int = 0) -> list[RequestInfo]:
    return [RequestInfo(i, p, c, float(i), reserve) for i, (p, c) in enumerate(prompt_cached)]


@dataclass
class Replay:
    """Re-applies a result's placements one by one, recording the state each one saw."""

    view: ClusterView
    tok: dict[int, int] = field(default_factory=dict)
    seq: dict[int, int] = field(default_factory=dict)
    free: dict[int, int] = field(default_factory=dict)
    read_q: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for e in self.view.engines:
            self.tok[e.engine_id] = e.tok
            self.seq[e.engine_id] = e.seq
            self.free[e.engine_id] = e.free_kv_tokens
        for n in self.view.nodes:
            self.read_q[n.node_id] = n.read_queue_tokens

    def apply(self, req: RequestInfo, pe: int, de: int, pe_node: int, de_node: int,
              pe_tokens: int, de_tokens: int) -> None:
        self.tok[pe] += req.prompt_tokens
        self.seq[pe] += 1
        self.tok[de] += req.decode_kv_tokens
        self.seq[de] += 1
        self.free[de] -= req.decode_kv_tokens
        self.read_q[pe_node] += pe_tokens
        self.read_q[de_node] += de_tokens


def by_id(waiting: Sequence[RequestInfo]) -> dict[object, RequestInfo]:
    return {r.request_id: r for r in waiting}


def order_of(result: ScheduleResult, waiting: Sequence[RequestInfo]) -> list[int]:
    pos = {r.request_id: i for i, r in enumerate(waiting)}
    return [pos[p.request_id] for p in result.placements]
