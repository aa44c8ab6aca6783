"""The scheduler process's picture of the cluster: per engine seq_e / tok_e / free KV, per node
the storage read queue, built from its own assignments and the engines' reports.

`view()` freezes it into the `ClusterView` the pure scheduler consumes; `metrics()` turns the
engines' latest counters into the server's `BackendMetrics`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from dualpath.core.backend import BackendMetrics
from dualpath.runtime import protocol as proto
from dualpath.scheduler import ClusterView, EngineState, NodeState


@dataclass
class EngineInfo:
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


class ClusterState:
    """Mutable bookkeeping; every method is called from the scheduler process's event loop."""

    def __init__(self) -> None:
        self.engines: dict[int, EngineInfo] = {}
        self.read_queue: dict[int, int] = {}
        self._util: dict[tuple[int, str], float] = {}
        self._last: dict[int, tuple[float, dict[str, float]]] = {}

    def add_engine(self, hello: proto.Hello) -> None:
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

    # ---- accounting (assignments and completions) ---------------------------------------

    def assign_prefill(self, engine_id: int, tokens: int) -> None:
        e = self.engines[engine_id]
        e.seq += 1
        e.tok += tokens

    def prefill_done(self, engine_id: int, tokens: int) -> None:
        e = self.engines[engine_id]
        e.seq = max(0, e.seq - 1)
        e.tok = max(0, e.tok - tokens)

    def assign_decode(self, engine_id: int, kv_tokens: int) -> None:
        e = self.engines[engine_id]
        e.seq += 1
        e.tok += kv_tokens
        e.kv_used_tokens += kv_tokens

    def decode_done(self, engine_id: int, kv_tokens: int) -> None:
        e = self.engines[engine_id]
        e.seq = max(0, e.seq - 1)
        e.tok = max(0, e.tok - kv_tokens)
        e.kv_used_tokens = max(0, e.kv_used_tokens - kv_tokens)

    def read_started(self, node_id: int, tokens: int) -> None:
        self.read_queue[node_id] = self.read_queue.get(node_id, 0) + tokens

    def read_done(self, node_id: int, tokens: int) -> None:
        self.read_queue[node_id] = max(0, self.read_queue.get(node_id, 0) - tokens)

    def largest_decode_kv_tokens(self) -> int:
        """KV room of the largest live decode engine, in tokens (0 if none is alive)."""
        return max((e.kv_capacity_tokens for e in self.engines.values()
                    if e.alive and e.role == "decode"), default=0)

    # ---- views ----------------------------------------------------------------------------

    def view(self) -> ClusterView:
        engines = [
            EngineState(e.engine_id, e.node_id, e.role, seq=e.seq, tok=e.tok,  # type: ignore[arg-type]
                        free_kv_tokens=max(0, e.kv_capacity_tokens - e.kv_used_tokens))
            for e in sorted(self.engines.values(), key=lambda e: e.engine_id) if e.alive
        ]
        live_nodes = {e.node_id: e.role for e in self.engines.values() if e.alive}
        nodes = [NodeState(n, role, read_queue_tokens=self.read_queue.get(n, 0))  # type: ignore[arg-type]
                 for n, role in sorted(live_nodes.items())]
        return ClusterView.build(engines, nodes)

    def record_counters(self, engine_id: int, counters: dict[str, float]) -> None:
        """Keep NIC utilization as the busy fraction between the last two reports."""
        now = time.monotonic()
        prev = self._last.get(engine_id)
        self._last[engine_id] = (now, counters)
        if prev is None:
            return
        dt = now - prev[0]
        if dt <= 0:
            return
        for key, value in counters.items():
            if key.endswith(".busy_s"):
                self._util[(engine_id, key[: -len(".busy_s")])] = min(
                    1.0, max(0.0, (value - prev[1].get(key, 0.0)) / dt))

    def metrics(self, counters: dict[int, dict[str, float]], *, num_waiting: int,
                num_running: int) -> BackendMetrics:
        def name(e: EngineInfo) -> str:
            return f"{'pe' if e.role == 'prefill' else 'de'}{e.node_id}.{e.engine_id}"

        read = {"pe": 0, "de": 0}
        buffers: dict[str, int] = {}
        for engine_id, c in counters.items():
            read["pe"] += int(c.get("bytes_read_pe_path", 0))
            read["de"] += int(c.get("bytes_read_de_path", 0))
            e = self.engines[engine_id]
            node = f"node{e.node_id}"
            # A dead engine's last report is history: its buffer and NICs are gone.
            used = int(c.get("buffer.used_bytes", 0)) if e.alive else 0
            buffers[node] = buffers.get(node, 0) + used
        util: dict[tuple[str, str], float] = {}
        for (engine_id, key), value in self._util.items():
            e = self.engines[engine_id]
            if not e.alive:
                continue
            nic, direction, klass = key.split(".")
            nic_name = f"node{e.node_id}/snic" if nic == "snic" else f"{name(e)}/cnic"
            label = (f"{nic_name}.{direction}", klass)
            util[label] = max(util.get(label, 0.0), value)
        return BackendMetrics(
            num_running=num_running, num_waiting=num_waiting, bytes_read_total=read,
            nic_utilization=util,
            read_queue_tokens={f"node{n}": t for n, t in self.read_queue.items()},
            engine_tokens={name(e): e.tok for e in self.engines.values()},
            engine_seqs={name(e): e.seq for e in self.engines.values()},
            buffer_bytes_in_use=buffers,
        )
