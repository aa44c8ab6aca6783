"""The router's books: what it has assigned to each vLLM instance, as the scheduler sees it.

One owner of the state (the router's event loop). `view()` freezes it into the `ClusterView`
that `dualpath.scheduler.GlobalScheduler` consumes — the very code the runtime and the
simulator run — and the four event methods keep it: `assign` (a placement was dispatched),
`prefill_done` (P answered: its prefill, and so the storage read of the request, is over),
`decode_done` (D answered). Engine ids are instance indices, node ids the instances' nodes.

Per engine: `seq_e` (assigned unfinished requests), `tok_e` (their tokens: prompt on P;
prompt + reserved generation on D), and for D the free KV room. Per node: `read_q`, the
tokens still to be read from storage on that node's SNIC (charged on assignment to the read
side, released when the prefill finishes).
"""

from __future__ import annotations

from dataclasses import dataclass

from dualpath.core.errors import SchedulingError
from dualpath.integrations.vllm.router.cluster_spec import InstanceInfo
from dualpath.scheduler import ClusterView, EngineState, NodeState, Placement, RequestInfo

UNBOUNDED_KV_TOKENS = 1 << 40


@dataclass
class _Engine:
    info: InstanceInfo
    kv_capacity_tokens: int
    seq: int = 0
    tok: int = 0
    kv_used: int = 0


@dataclass(frozen=True)
class Assignment:
    """What one dispatched request holds, so that its release undoes exactly that."""

    pe_engine: int
    de_engine: int
    read_node: int
    read_tokens: int
    prefill_tokens: int
    decode_tokens: int


class RouterBooks:
    """seq_e / tok_e / free KV per instance and read_q per node; see the module docstring."""

    def __init__(self, instances: tuple[InstanceInfo, ...]) -> None:
        self.engines = [
            _Engine(i, i.kv_capacity_tokens if i.kv_capacity_tokens is not None
                    else UNBOUNDED_KV_TOKENS)
            for i in instances
        ]
        self.read_queue: dict[int, int] = {i.node_id: 0 for i in instances}

    def set_kv_capacity(self, engine_id: int, tokens: int) -> None:
        self.engines[engine_id].kv_capacity_tokens = tokens

    def view(self) -> ClusterView:
        engines = [EngineState(engine_id=i, node_id=e.info.node_id, role=e.info.role,  # type: ignore[arg-type]
                               seq=e.seq, tok=e.tok,
                               free_kv_tokens=max(0, e.kv_capacity_tokens - e.kv_used))
                   for i, e in enumerate(self.engines)]
        roles = {e.info.node_id: e.info.role for e in self.engines}
        nodes = [NodeState(node_id=n, role=roles[n], read_queue_tokens=q)  # type: ignore[arg-type]
                 for n, q in sorted(self.read_queue.items())]
        return ClusterView.build(engines, nodes)

    def assign(self, placement: Placement, info: RequestInfo) -> Assignment:
        pe, de = self.engines[placement.pe_engine], self.engines[placement.de_engine]
        if pe.info.role != "prefill" or de.info.role != "decode":
            raise SchedulingError("placement does not pair a prefill and a decode instance")
        read_node = placement.pe_node if placement.read.side == "pe" else placement.de_node
        a = Assignment(pe_engine=placement.pe_engine, de_engine=placement.de_engine,
                       read_node=read_node, read_tokens=info.cached_tokens,
                       prefill_tokens=info.prefill_load_tokens,
                       decode_tokens=info.decode_kv_tokens)
        pe.seq += 1
        pe.tok += a.prefill_tokens
        de.seq += 1
        de.tok += a.decode_tokens
        de.kv_used += a.decode_tokens
        self.read_queue[read_node] += a.read_tokens
        return a

    def prefill_done(self, a: Assignment) -> None:
        pe = self.engines[a.pe_engine]
        pe.seq -= 1
        pe.tok -= a.prefill_tokens
        self.read_queue[a.read_node] -= a.read_tokens
        self._check()

    def decode_done(self, a: Assignment) -> None:
        de = self.engines[a.de_engine]
        de.seq -= 1
        de.tok -= a.decode_tokens
        de.kv_used -= a.decode_tokens
        self._check()

    def idle(self) -> bool:
        """True when nothing is assigned (every counter back at zero)."""
        return (all(e.seq == 0 and e.tok == 0 and e.kv_used == 0 for e in self.engines)
                and not any(self.read_queue.values()))

    def _check(self) -> None:
        for e in self.engines:
            if e.seq < 0 or e.tok < 0 or e.kv_used < 0:
                raise SchedulingError(f"router books of {e.info.name} went negative")
        if any(q < 0 for q in self.read_queue.values()):
            raise SchedulingError("a read queue in the router's books went negative")
