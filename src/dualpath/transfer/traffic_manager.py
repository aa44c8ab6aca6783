"""`TrafficManager`: everything one engine process needs to move bytes, built from one spec.

The launcher lays out the NICs of a cluster with `plan_cluster_traffic` (one SNIC per node,
shared by its engines through a file; one CNIC per engine; one read queue per node), hands
each engine process its frozen `EngineTrafficSpec`, and the engine builds a
`TrafficManager` from it:

    tm = TrafficManager(spec, store=FileKVStore(root, geometry))
    tm.transport.send(peer, {"layer": 3}, layer_blocks)      # through tm.cnic
    block = tm.store.get(block_hash)                          # through tm.snic
    tm.read_queue.add(tokens); ...; tm.read_queue.remove(tokens)
    if tm.buffer.can_reserve(n): tm.buffer.reserve(request_id, n)
    tm.collective.run_layer(tokens)                           # synthetic all-to-all
    tm.cnic.transmit(n, TrafficClass.KV, Direction.RX)        # host->GPU copy via the CNIC
    metrics = tm.stats()
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dualpath.core.errors import ConfigError
from dualpath.kv.store import KVStore
from dualpath.transfer.base import Transport
from dualpath.transfer.buffer_pool import BufferPool
from dualpath.transfer.collective import AllToAllShape, CollectiveLoad
from dualpath.transfer.nic import EmulatedNic, NicSpec
from dualpath.transfer.shaped_store import ReadQueue, ShapedStore

BACKENDS = ("zmq", "mooncake")


@dataclass(frozen=True)
class EngineTrafficSpec:
    """The transfer-side configuration of one engine (picklable: crosses into its process)."""

    engine_id: str
    node_id: str
    cnic: NicSpec
    snic: NicSpec
    read_queue_path: str
    buffer_bytes: int
    bind: str = "tcp://127.0.0.1:0"
    backend: str = "zmq"
    all_to_all: AllToAllShape | None = None
    collective_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"transfer backend {self.backend!r}: choose one of {', '.join(BACKENDS)}")
        if self.buffer_bytes <= 0:
            raise ConfigError(f"engine {self.engine_id}: buffer_bytes must be > 0")


def plan_cluster_traffic(
    run_dir: str | Path,
    nodes: Mapping[str, Sequence[str]],
    *,
    snic_bytes_s: float | None,
    cnic_bytes_s: float | None,
    buffer_bytes: int,
    isolation: bool = True,
    backend: str = "zmq",
    all_to_all: AllToAllShape | None = None,
) -> dict[str, EngineTrafficSpec]:
    """Specs for every engine: `nodes` maps node id -> its engine ids. Files go in `run_dir`
    (use a fresh directory per run, ideally on /dev/shm); None bandwidth = unlimited."""
    root = Path(run_dir)
    specs: dict[str, EngineTrafficSpec] = {}
    for node_id, engines in nodes.items():
        snic = NicSpec(f"snic-{node_id}", str(root / f"snic-{node_id}.nic"), snic_bytes_s,
                       isolation=isolation)
        for engine_id in engines:
            if engine_id in specs:
                raise ConfigError(f"engine {engine_id} appears on two nodes")
            specs[engine_id] = EngineTrafficSpec(
                engine_id=engine_id, node_id=node_id,
                cnic=NicSpec(f"cnic-{engine_id}", str(root / f"cnic-{engine_id}.nic"),
                             cnic_bytes_s, isolation=isolation),
                snic=snic, read_queue_path=str(root / f"readq-{node_id}.q"),
                buffer_bytes=buffer_bytes, backend=backend, all_to_all=all_to_all)
    return specs


def make_transport(backend: str, bind: str, cnic: EmulatedNic | None) -> Transport:
    """The transport named `backend`; its module is imported only here."""
    if backend == "zmq":
        from dualpath.transfer.zmq_transport import ZmqTransport

        return ZmqTransport(bind, cnic=cnic)
    if backend == "mooncake":
        from dualpath.transfer.mooncake_transport import MooncakeTransport

        return MooncakeTransport(bind, cnic=cnic)
    raise ConfigError(f"transfer backend {backend!r}: choose one of {', '.join(BACKENDS)}")


class TrafficManager:
    """One engine's NICs, transport, SNIC-paced store, node read queue and host buffer."""

    def __init__(self, spec: EngineTrafficSpec, store: KVStore | None = None) -> None:
        self.spec = spec
        self.cnic = EmulatedNic(spec.cnic)
        self.snic = EmulatedNic(spec.snic)
        self.read_queue = ReadQueue(spec.read_queue_path)
        self.buffer = BufferPool(f"buffer-{spec.engine_id}", spec.buffer_bytes)
        self.store: ShapedStore | None = None if store is None else ShapedStore(store, self.snic)
        self.collective: CollectiveLoad | None = None
        if spec.all_to_all is not None:
            self.collective = CollectiveLoad(self.cnic, spec.all_to_all, scale=spec.collective_scale)
        self.transport = make_transport(spec.backend, spec.bind, self.cnic)

    @property
    def address(self) -> str:
        return self.transport.address

    def stats(self) -> dict[str, Any]:
        """Flat metrics: cnic.* and snic.* lane counters, buffer.*, read_queue_tokens."""
        out: dict[str, Any] = {}
        for prefix, nic in (("cnic", self.cnic), ("snic", self.snic)):
            for key, value in nic.stats().flat().items():
                out[f"{prefix}.{key}"] = value
        for key, value in vars(self.buffer.stats()).items():
            if key != "name":
                out[f"buffer.{key}"] = value
        out["read_queue_tokens"] = self.read_queue.tokens()
        return out

    def close(self) -> None:
        """Close the transport, then the shared-state mappings. Idempotent."""
        self.transport.close()
        self.cnic.close()
        self.snic.close()
        self.read_queue.close()
