"""Storage I/O through the node's SNIC, and the node's storage read queue.

`ShapedStore` wraps any `KVStore`: every byte `get`/`get_layer` returns is paced on the
SNIC RX lane and every byte `put` writes on the TX lane (storage traffic uses the KV class).
The pacing overlaps the real read (cut-through: the reservation may start when the read
began), so a read costs about max(store time, bytes / SNIC rate) and all engines of a node,
in any process, share the one SNIC because they open the same `NicSpec.path`.

`ReadQueue` is the per-node storage read queue in tokens (DESIGN.md section 3, `read_q`):
shared across processes through a small file, incremented when an engine accepts a read,
decremented as the read completes; the scheduler reads `tokens()`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np

from dualpath.core.errors import TransferError
from dualpath.kv.store import KVStore, StoreStats
from dualpath.transfer.nic import Direction, EmulatedNic, TrafficClass
from dualpath.transfer.shared_state import SharedCounters


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
        if block is not None:
            self.snic.transmit(block.nbytes, TrafficClass.KV, Direction.RX, earliest_start_s=started)
        return block

    def get_layer(
        self, block_hash: str, layer: int, out: np.ndarray | None = None
    ) -> np.ndarray | None:
        started = time.monotonic()
        block = self.inner.get_layer(block_hash, layer, out)
        if block is not None:
            self.snic.transmit(block.nbytes, TrafficClass.KV, Direction.RX, earliest_start_s=started)
        return block

    def put(self, block_hash: str, block: np.ndarray) -> None:
        started = time.monotonic()
        self.inner.put(block_hash, block)
        self.snic.transmit(block.nbytes, TrafficClass.KV, Direction.TX, earliest_start_s=started)

    def stats(self) -> StoreStats:
        return self.inner.stats()


_TOKENS, _READS, _TOTAL_TOKENS = range(3)


class ReadQueue:
    """A node's pending storage reads, in tokens, shared by every process opening `path`."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._state = SharedCounters(path, 3)

    def add(self, tokens: int) -> None:
        """A read of `tokens` tokens was accepted by an engine of this node."""
        if tokens < 0:
            raise TransferError(f"read queue: cannot add {tokens} tokens")
        with self._state.locked() as v:
            v[_TOKENS] += tokens
            v[_READS] += 1
            v[_TOTAL_TOKENS] += tokens

    def remove(self, tokens: int, *, finished: bool = True) -> None:
        """`tokens` of a read are done (`finished`: the whole read is, so one read fewer)."""
        with self._state.locked() as v:
            if tokens > v[_TOKENS] or (finished and v[_READS] < 1):
                raise TransferError("read queue: removing more than was added")
            v[_TOKENS] -= tokens
            if finished:
                v[_READS] -= 1

    @contextmanager
    def pending(self, tokens: int) -> Iterator[None]:
        """Count `tokens` as queued for the duration of the block (also on error)."""
        self.add(tokens)
        try:
            yield
        finally:
            self.remove(tokens)

    def tokens(self) -> int:
        """Tokens queued for reading on this node now (the scheduler's `read_q`)."""
        with self._state.locked() as v:
            return int(v[_TOKENS])

    def reads(self) -> int:
        with self._state.locked() as v:
            return int(v[_READS])

    def total_tokens(self) -> int:
        """Tokens ever added (for metrics)."""
        with self._state.locked() as v:
            return int(v[_TOTAL_TOKENS])

    def close(self) -> None:
        self._state.close()
