"""The KV store interface (contract 3) and `MemoryKVStore`, its in-process fake.

Who calls what:

- The scheduler side (prefix matching) calls `longest_prefix` / `contains_many` to learn how
  many leading blocks of a prompt can be loaded instead of computed. These never read block
  data and never mutate the store (an implementation may refresh its private index).
- Engines on the read path call `get` (a Full Block into a buffer) or `get_layer` (one Layer
  Block, for layerwise streaming). A miss — absent, corrupt, truncated — is `None`; the
  caller recomputes. Reads never mutate stored blocks (a corrupt one may be moved aside).
- Decode engines call `put` when a block of new KV is complete (`FileKVStore.put` also
  takes `parent`, the block before it in the prompt, which eviction uses). `put` is the only call that adds data; it is
  atomic (readers see the whole block or nothing) and idempotent (putting a stored hash
  again is a no-op: same hash = same prefix = same bytes). A store with a capacity may
  evict blocks to make room (least recently used leaves of the prefix trie first, see
  `capacity`) or drop the put when it cannot; a later read of that block is a miss.

`stats()` returns a snapshot of this instance's counters (not shared between processes).
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import numpy as np

from dualpath.kv.layout import (
    BlockGeometry,
    check_full_block,
    check_layer_block,
    check_layer_index,
)


@dataclass(frozen=True)
class StoreStats:
    """Counters of one store instance since it was opened. Bytes are payload bytes."""

    gets: int = 0
    get_hits: int = 0
    layer_gets: int = 0
    layer_hits: int = 0
    puts: int = 0
    puts_skipped: int = 0  # put of a hash that was already stored
    corrupt_blocks: int = 0  # reads that found a corrupt/truncated/wrong-geometry block
    quarantined_blocks: int = 0  # corrupt files moved aside (FileKVStore)
    bytes_read: int = 0
    bytes_written: int = 0
    direct_reads: int = 0  # Full Block reads done with O_DIRECT (FileKVStore)
    puts_dropped: int = 0  # puts refused because the capacity could not be freed
    evictions: int = 0  # blocks this instance deleted to stay under the capacity
    evicted_bytes: int = 0
    evicted_reads: int = 0  # reads that found their block evicted under them (misses)

    @property
    def get_misses(self) -> int:
        return self.gets - self.get_hits

    @property
    def layer_misses(self) -> int:
        return self.layer_gets - self.layer_hits


class StatsCounter:
    """Thread-safe accumulator behind `KVStore.stats()`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values = {f.name: 0 for f in fields(StoreStats)}

    def add(self, **deltas: int) -> None:
        with self._lock:
            for name, delta in deltas.items():
                self._values[name] += delta

    def snapshot(self) -> StoreStats:
        with self._lock:
            return replace(StoreStats(), **self._values)


class KVStore(ABC):
    """Content-addressed store of Full Blocks, keyed by chained block hash."""

    geometry: BlockGeometry

    @abstractmethod
    def contains_many(self, hashes: Sequence[str]) -> list[bool]:
        """Whether each hash is stored (no data read, nothing mutated). Scheduler-side."""

    @abstractmethod
    def longest_prefix(self, hashes: Sequence[str]) -> int:
        """How many leading `hashes` (a prompt's chain) are stored. Scheduler-side, read-only."""

    @abstractmethod
    def get(self, block_hash: str, out: np.ndarray | None = None) -> np.ndarray | None:
        """The Full Block stored under `block_hash` (into `out` if given), or None on a miss.

        Called by engines on the read path. A corrupt or truncated block is a miss, never
        returned. The returned array is the caller's (a fresh array, or `out`).
        """

    @abstractmethod
    def get_layer(
        self, block_hash: str, layer: int, out: np.ndarray | None = None
    ) -> np.ndarray | None:
        """Layer Block `layer` (`[1, tokens, bytes]`) of a stored block, or None on a miss.

        Reads only that layer's bytes and verifies them alone. Called by layerwise loaders.
        """

    @abstractmethod
    def put(self, block_hash: str, block: np.ndarray, parent: str | None = None) -> None:
        """Store a Full Block under `block_hash`: atomic, idempotent. Called by decode engines.

        `parent` is the hash of the block before it in its prompt (None for a first block):
        stores with a capacity bound evict leaves of that prefix tree first.
        Raises BlockLayoutError if `block` does not have this store's geometry.
        """

    @abstractmethod
    def stats(self) -> StoreStats:
        """A snapshot of this instance's counters."""

    def get_many(
        self, hashes: Sequence[str], outs: Sequence[np.ndarray | None] | None = None
    ) -> list[np.ndarray | None]:
        """`get` of several blocks (e.g. a prompt's prefix), possibly concurrently; same order.

        Backends with real I/O latency override this to keep several reads in flight.
        """
        if outs is None:
            return [self.get(h) for h in hashes]
        return [self.get(h, out=o) for h, o in zip(hashes, outs, strict=True)]

    def get_layer_many(
        self, hashes: Sequence[str], layer: int, outs: Sequence[np.ndarray | None] | None = None
    ) -> list[np.ndarray | None]:
        """`get_layer` of one layer of several blocks (a layerwise loader's step), same order."""
        if outs is None:
            return [self.get_layer(h, layer) for h in hashes]
        return [self.get_layer(h, layer, out=o) for h, o in zip(hashes, outs, strict=True)]

    def put_many(self, items: Sequence[tuple[str, np.ndarray]]) -> None:
        """`put` of several blocks, possibly concurrently. Each block is atomic on its own."""
        for h, block in items:
            self.put(h, block)

    def close(self) -> None:
        """Release background resources (I/O threads). The store stays usable (it reopens them)."""
        return None


class MemoryKVStore(KVStore):
    """A dict of Full Blocks; the fake for tests and for `--no-kv-store`-free unit setups."""

    def __init__(self, geometry: BlockGeometry) -> None:
        self.geometry = geometry
        self._blocks: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()
        self._stats = StatsCounter()

    def contains_many(self, hashes: Sequence[str]) -> list[bool]:
        return [h in self._blocks for h in hashes]

    def longest_prefix(self, hashes: Sequence[str]) -> int:
        n = 0
        for h in hashes:
            if h not in self._blocks:
                break
            n += 1
        return n

    def get(self, block_hash: str, out: np.ndarray | None = None) -> np.ndarray | None:
        block = self._blocks.get(block_hash)
        if block is None:
            self._stats.add(gets=1)
            return None
        if out is None:
            out = block.copy()
        else:
            check_full_block(out, self.geometry, "output Full Block")
            np.copyto(out, block)
        self._stats.add(gets=1, get_hits=1, bytes_read=block.nbytes)
        return out

    def get_layer(
        self, block_hash: str, layer: int, out: np.ndarray | None = None
    ) -> np.ndarray | None:
        check_layer_index(layer, self.geometry)
        block = self._blocks.get(block_hash)
        if block is None:
            self._stats.add(layer_gets=1)
            return None
        src = block[layer : layer + 1]
        if out is None:
            out = src.copy()
        else:
            check_layer_block(out, self.geometry, "output Layer Block")
            np.copyto(out, src)
        self._stats.add(layer_gets=1, layer_hits=1, bytes_read=src.nbytes)
        return out

    def put(self, block_hash: str, block: np.ndarray, parent: str | None = None) -> None:
        check_full_block(block, self.geometry)
        with self._lock:
            if block_hash in self._blocks:
                self._stats.add(puts=1, puts_skipped=1)
                return
            stored = block.copy()
            stored.flags.writeable = False
            self._blocks[block_hash] = stored
        self._stats.add(puts=1, bytes_written=block.nbytes)

    def stats(self) -> StoreStats:
        return self._stats.snapshot()
