"""The scheduler process's load books: per engine `seq_e` / `tok_e` / KV in use, per node the
storage read queue — the state the pure scheduler sees.

Only `scheduler.charges.Charge` changes the counters (through `charge_engine` /
`charge_node`), so the runtime charges and releases exactly what the scheduler's own
virtual cluster and the simulator do. The ledger is owned by `RequestBooks`; nothing else
writes it. `view()` freezes it into the `ClusterView` the scheduler consumes.
"""

from __future__ import annotations

from dataclasses import dataclass

from dualpath.core.errors import SchedulingError
from dualpath.scheduler import ClusterView, EngineState, NodeState
from dualpath.wire.control import Hello


@dataclass
class EngineInfo:
    """One engine as the scheduler process knows it: who it said it is, and its load."""

    engine_id: int
    node_id: int
    role: str
    data_address: str
    kv_capacity_tokens: int
    prefill_tokens_per_s: float
    pid: int
    alive: bool = True
    seq: int = 0
    tok: int = 0
    kv_used_tokens: int = 0

    @property
    def label(self) -> str:
        """Metric label: "pe<node>.<engine>" / "de<node>.<engine>"."""
        return f"{'pe' if self.role == 'prefill' else 'de'}{self.node_id}.{self.engine_id}"


class Ledger:
    """Mutable; called from the scheduler process's event loop only (via RequestBooks)."""

    def __init__(self) -> None:
        self.engines: dict[int, EngineInfo] = {}
        self.read_queue: dict[int, int] = {}

    # ---- membership ------------------------------------------------------------------------

    def add_engine(self, hello: Hello) -> None:
        """A new engine (or a restarted one under the same id: its load starts at zero)."""
        known = self.engines.get(hello.engine_id)
        if known is not None and known.alive:
            raise SchedulingError(f"engine {hello.engine_id} is already registered")
        for other in self.engines.values():
            if other.alive and other.node_id == hello.node_id and other.role != hello.role:
                raise SchedulingError(f"engine {hello.engine_id}: node {hello.node_id} already "
                                      f"holds {other.role} engines")
        self.engines[hello.engine_id] = EngineInfo(
            hello.engine_id, hello.node_id, hello.role, hello.data_address,
            hello.kv_capacity_tokens, hello.prefill_tokens_per_s, hello.pid,
        )
        self.read_queue.setdefault(hello.node_id, 0)

    def alive(self, engine_id: int) -> bool:
        info = self.engines.get(engine_id)
        return info is not None and info.alive

    def mark_dead(self, engine_id: int) -> None:
        if engine_id in self.engines:
            self.engines[engine_id].alive = False

    def has_role(self, role: str) -> bool:
        return any(e.alive and e.role == role for e in self.engines.values())

    def live_engines(self) -> list[EngineInfo]:
        return [e for e in self.engines.values() if e.alive]

    def largest_decode_kv_tokens(self) -> int:
        """KV room of the largest live decode engine, in tokens (0 if none is alive)."""
        return max((e.kv_capacity_tokens for e in self.engines.values()
                    if e.alive and e.role == "decode"), default=0)

    # ---- scheduler.charges.LoadBooks -------------------------------------------------------

    def charge_engine(self, engine: int, seq: int, tok: int, kv: int) -> None:
        e = self.engines[engine]
        e.seq += seq
        e.tok += tok
        e.kv_used_tokens += kv
        if min(e.seq, e.tok, e.kv_used_tokens) < 0:
            raise SchedulingError(f"engine {engine}: released more than was charged")

    def charge_node(self, node: int, tokens: int) -> None:
        self.read_queue[node] = self.read_queue.get(node, 0) + tokens
        if self.read_queue[node] < 0:
            raise SchedulingError(f"node {node}: released more reads than were charged")

    def idle(self) -> bool:
        """Nothing charged anywhere (the integrity check after a drain)."""
        return (all(e.seq == e.tok == e.kv_used_tokens == 0 for e in self.engines.values())
                and not any(self.read_queue.values()))

    # ---- the scheduler's view --------------------------------------------------------------

    def view(self) -> ClusterView:
        """Live engines by id (the scheduler's tie-break order must not depend on the order
        engines said hello) and their nodes."""
        engines = [
            EngineState(e.engine_id, e.node_id, e.role, seq=e.seq, tok=e.tok,  # type: ignore[arg-type]
                        free_kv_tokens=max(0, e.kv_capacity_tokens - e.kv_used_tokens))
            for e in sorted(self.engines.values(), key=lambda e: e.engine_id) if e.alive
        ]
        live_nodes = {e.node_id: e.role for e in self.engines.values() if e.alive}
        nodes = [NodeState(n, role, read_queue_tokens=self.read_queue.get(n, 0))  # type: ignore[arg-type]
                 for n, role in sorted(live_nodes.items())]
        return ClusterView.build(engines, nodes)
