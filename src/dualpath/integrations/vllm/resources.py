"""The node resources a connector opens: the shaped KV store, the NICs, the statistics.

This is the one module that imports `ShapedStore` (`dualpath.engine.shaped_store`). The NIC
and statistics files live under the run directory, shared across processes: every instance
of a node opens the same SNIC file, so a node's SNIC is one link whatever the number of
instances on it, and the router reads the statistics from the same files. (The scheduler's
`read_q` is the router's own book, charged and released through `scheduler.charges`.)

`InstanceStats` names the counters an instance exports (the router's `/metrics`):

- `bytes_read_pe_path` / `bytes_read_de_path`: KV bytes this instance read from storage for
  requests on the PE / DE read path (a P reads only PE-path hits, a D only DE-path hits);
- `hit_bytes_relayed`: DE-path hit KV a D sent to a P (compute network);
- `kv_bytes_sent` / `kv_bytes_received`: KV a P streamed to a D / a D received;
- `blocks_persisted`, `bytes_persisted`: Full Blocks a D wrote to the store;
- `relays_ok`, `relays_failed`: requests whose relay completed / was given up (recomputed);
- `hit_tokens_loaded`: prompt tokens whose KV this instance took from the relay or store.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from dualpath.engine.shaped_store import ShapedStore
from dualpath.kv.layout import BlockGeometry
from dualpath.kv.open_store import open_store as open_kv_store
from dualpath.kv.open_store import store_kind
from dualpath.kv.store import KVStore
from dualpath.transfer.nic import EmulatedNic, NicSpec
from dualpath.transfer.shared_state import SharedCounters

STAT_NAMES: tuple[str, ...] = (
    "bytes_read_pe_path",
    "bytes_read_de_path",
    "hit_bytes_relayed",
    "kv_bytes_sent",
    "kv_bytes_received",
    "blocks_persisted",
    "bytes_persisted",
    "relays_ok",
    "relays_failed",
    "hit_tokens_loaded",
    "frames_rejected",
)


class InstanceStats:
    """Named float counters in a shared file (`ConnectorConfig.stats_path`)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._counters = SharedCounters(path, len(STAT_NAMES))
        self._index = {name: i for i, name in enumerate(STAT_NAMES)}

    def add(self, **deltas: float) -> None:
        with self._counters.locked() as values:
            for name, delta in deltas.items():
                values[self._index[name]] += delta

    def snapshot(self) -> dict[str, float]:
        return dict(zip(STAT_NAMES, self._counters.snapshot(), strict=True))

    def reset(self) -> None:
        self._counters.reset()

    def close(self) -> None:
        self._counters.close()


@dataclass(frozen=True)
class NodeFiles:
    """Paths of one node's shared state files in a run directory."""

    run_dir: str
    node_id: int

    @property
    def snic(self) -> str:
        return os.path.join(self.run_dir, f"snic-{self.node_id}.nic")



def open_snic(files: NodeFiles, bandwidth_bytes_s: float | None) -> EmulatedNic:
    return EmulatedNic(NicSpec(name=f"snic{files.node_id}", path=files.snic,
                               bandwidth_bytes_s=bandwidth_bytes_s))


def open_cnic(path: str, name: str, bandwidth_bytes_s: float | None) -> EmulatedNic:
    return EmulatedNic(NicSpec(name=name, path=path, bandwidth_bytes_s=bandwidth_bytes_s))


def open_store(spec: str, geometry: BlockGeometry, snic: EmulatedNic | None,
               io_threads: int = 4) -> KVStore:
    """The KV store `spec` names (a directory or a redis:// URL, `dualpath.kv.open_store`);
    every block read or written through `snic` when given."""
    options = {"io_threads": io_threads} if store_kind(spec) == "file" else {}
    store = open_kv_store(spec, geometry, **options)
    return store if snic is None else ShapedStore(store, snic)
