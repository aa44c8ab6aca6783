"""Storage I/O through the node's SNIC.

`ShapedStore` wraps any `KVStore`: every byte `get`/`get_layer` returns is paced on the
SNIC RX lane and every byte `put` writes on the TX lane (storage traffic uses the KV class).
The pacing overlaps the real read (cut-through: the reservation may start when the read
began), so a read costs about max(store time, bytes / SNIC rate) and all engines of a node,
in any process, share the one SNIC because they open the same `NicSpec.path`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from dualpath.kv.block_value import value_bytes
from dualpath.kv.store import KVStore, StoreStats
from dualpath.transfer.nic import Direction, EmulatedNic, TrafficClass


class ShapedStore(KVStore):
    """`store` with its block traffic paced by `snic`. Metadata calls are not paced."""

    def __init__(self, store: KVStore, snic: EmulatedNic) -> None:
        self.inner = store
        self.snic = snic
        self.geometry = store.geometry

    def contains_many(self, hashes: Sequence[str]) -> list[bool]:
        return self.inner.contains_many(hashes)

    def longest_prefix(self, hashes: Sequence[str]) -> int:
        return self.inner.longest_prefix(hashes)

    def get(self, block_hash: str, out: np.ndarray | None = None) -> np.ndarray | None:
        started = time.monotonic()
        block = self.inner.get(block_hash, out)
        if block is not None:  # the block as stored crosses the SNIC: header + Full Block
            self.snic.transmit(value_bytes(self.geometry, block_hash), TrafficClass.KV,
                               Direction.RX, earliest_start_s=started)
        return block

    def get_layer(
        self, block_hash: str, layer: int, out: np.ndarray | None = None
    ) -> np.ndarray | None:
        started = time.monotonic()
        block = self.inner.get_layer(block_hash, layer, out)
        if block is not None:
            self.snic.transmit(block.nbytes, TrafficClass.KV, Direction.RX, earliest_start_s=started)
        return block

    def put(self, block_hash: str, block: np.ndarray, parent: str | None = None) -> None:
        started = time.monotonic()
        self.inner.put(block_hash, block, parent)
        self.snic.transmit(value_bytes(self.geometry, block_hash), TrafficClass.KV,
                           Direction.TX, earliest_start_s=started)

    def stats(self) -> StoreStats:
        return self.inner.stats()
