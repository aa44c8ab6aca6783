"""The engines' periodic reports turned into the server's `BackendMetrics`.

Engines send `EngineStats` every 0.5 s (NIC, store, buffer, load and rejected-frame counters,
flattened). This keeps the latest report per engine and the NIC busy fraction between the
last two reports; `snapshot` adds the scheduler's own books (tok_e, seq_e, read queues).
"""

from __future__ import annotations

from collections.abc import Mapping

from dualpath.core.backend import BackendMetrics
from dualpath.runtime.ledger import Ledger
from dualpath.wire import Rejections


class ClusterMetrics:
    """Called from the scheduler process's event loop; `now_s` comes from the caller."""

    def __init__(self) -> None:
        self.counters: dict[int, dict[str, float]] = {}
        self._util: dict[tuple[int, str], float] = {}
        self._last_s: dict[int, float] = {}
        # frames and connections the scheduler process itself refused (ZAP counts from its
        # own thread)
        self.rejected = Rejections()
        self.engine_restarts = 0

    def record(self, engine_id: int, counters: Mapping[str, float], now_s: float) -> None:
        """Keep the report; NIC utilization is the busy fraction since the previous one."""
        prev = self.counters.get(engine_id)
        prev_s = self._last_s.get(engine_id)
        self.counters[engine_id] = dict(counters)
        self._last_s[engine_id] = now_s
        if prev is None or prev_s is None or now_s <= prev_s:
            return
        dt = now_s - prev_s
        for key, value in counters.items():
            if key.endswith(".busy_s"):
                self._util[(engine_id, key[: -len(".busy_s")])] = min(
                    1.0, max(0.0, (value - prev.get(key, 0.0)) / dt))

    def forget(self, engine_id: int) -> None:
        """A dead engine's last report is history: its buffer and NICs are gone."""
        self._util = {k: v for k, v in self._util.items() if k[0] != engine_id}
        counters = self.counters.get(engine_id)
        if counters is not None:
            counters["buffer.used_bytes"] = 0.0

    def snapshot(self, ledger: Ledger, *, num_waiting: int, num_running: int,
                 kv_store_bytes: int | None = None) -> BackendMetrics:
        read = {"pe": 0, "de": 0}
        buffers: dict[str, int] = {}
        rejected = self.rejected.snapshot()
        evictions = 0
        for engine_id, c in self.counters.items():
            evictions += int(c.get("store.evictions", 0))
            read["pe"] += int(c.get("bytes_read_pe_path", 0))
            read["de"] += int(c.get("bytes_read_de_path", 0))
            for key, value in c.items():
                if key.startswith("wire.rejected."):
                    reason = key[len("wire.rejected."):]
                    rejected[reason] = rejected.get(reason, 0) + int(value)
            e = ledger.engines.get(engine_id)
            if e is None:
                continue
            node = f"node{e.node_id}"
            used = int(c.get("buffer.used_bytes", 0)) if e.alive else 0
            buffers[node] = buffers.get(node, 0) + used
        util: dict[tuple[str, str], float] = {}
        for (engine_id, key), value in self._util.items():
            e = ledger.engines.get(engine_id)
            if e is None or not e.alive:
                continue
            nic, direction, klass = key.split(".")
            nic_name = f"node{e.node_id}/snic" if nic == "snic" else f"{e.label}/cnic"
            label = (f"{nic_name}.{direction}", klass)
            util[label] = max(util.get(label, 0.0), value)
        live = ledger.live_engines()
        return BackendMetrics(
            num_running=num_running, num_waiting=num_waiting, bytes_read_total=read,
            nic_utilization=util,
            read_queue_tokens={f"node{n}": t for n, t in ledger.read_queue.items()},
            engine_tokens={e.label: e.tok for e in live},
            engine_seqs={e.label: e.seq for e in live},
            buffer_bytes_in_use=buffers,
            kv_store_bytes=kv_store_bytes,
            internal_frames_rejected=rejected,
            kv_store_evictions_total=evictions,
            engine_restarts_total=self.engine_restarts,
        )


def stored_bytes(store: object | None) -> int | None:
    """Bytes in the store, when the backend can say cheaply (the file store's size ledger)."""
    sized = getattr(store, "stored_bytes", None)
    return int(sized()) if callable(sized) else None
