"""The router's books: what it has assigned to each vLLM instance, as the scheduler sees it.

One owner of the state (the router's event loop). `view()` freezes it into the `ClusterView`
that `dualpath.scheduler.GlobalScheduler` consumes — the very code the runtime and the
simulator run — and every change goes through `scheduler.charges.Charge`, the one rule of
what a placement charges (the runtime's ledger and the simulator use it too): `assign`
charges all of it, `prefill_done` releases the prefill and read parts (P answered: its
prefill, and so the storage read, is over), `decode_done` the decode part (D answered).
Engine ids are instance indices, node ids the instances' nodes.

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
from dualpath.scheduler.charges import ALL_PARTS, Charge, ChargePart

UNBOUNDED_KV_TOKENS = 1 << 40


@dataclass
class _Engine:
    info: InstanceInfo
    kv_capacity_tokens: int
    seq: int = 0
    tok: int = 0
    kv_used: int = 0


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

    # -- scheduler.charges.LoadBooks ----------------------------------------------------------

    def charge_engine(self, engine: int, seq: int, tok: int, kv: int) -> None:
        e = self.engines[engine]
        e.seq += seq
        e.tok += tok
        e.kv_used += kv

    def charge_node(self, node: int, tokens: int) -> None:
        self.read_queue[node] += tokens

    # -- events ---------------------------------------------------------------------------

    def assign(self, placement: Placement, info: RequestInfo) -> Charge:
        pe, de = self.engines[placement.pe_engine], self.engines[placement.de_engine]
        if pe.info.role != "prefill" or de.info.role != "decode":
            raise SchedulingError("placement does not pair a prefill and a decode instance")
        charge = Charge.of(info, placement.pe_engine, placement.de_engine, placement.pe_node,
                           placement.de_node, placement.read)
        charge.apply(self, ALL_PARTS)
        return charge

    def prefill_done(self, charge: Charge) -> None:
        charge.apply(self, frozenset({ChargePart.PREFILL, ChargePart.READ}), sign=-1)
        self._check()

    def decode_done(self, charge: Charge) -> None:
        charge.apply(self, frozenset({ChargePart.DECODE}), sign=-1)
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
