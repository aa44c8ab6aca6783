"""`BatchedStore`: `get_many` / `get_layer_many` / `put_many` with several requests in flight.

One file per block only reaches a device's or a network file system's streaming bandwidth
with several requests outstanding; preadv, writev, fsync and the CRC release the GIL, so a
small thread pool keeps `io_threads` blocks in flight. Subclasses implement the single-block
calls.
"""

from __future__ import annotations

import threading
from abc import abstractmethod
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from dualpath.core.errors import StoreError
from dualpath.kv.store import KVStore


class BatchedStore(KVStore):
    """A KVStore whose batch calls run the single-block calls on `io_threads` threads."""

    def __init__(self, io_threads: int) -> None:
        self.io_threads = io_threads
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    @abstractmethod
    def put(self, block_hash: str, block: np.ndarray, parent: str | None = None) -> None:
        """`KVStore.put`, plus the hash of the block before this one in its prompt."""

    def get_many(
        self, hashes: Sequence[str], outs: Sequence[np.ndarray | None] | None = None
    ) -> list[np.ndarray | None]:
        targets = list(outs) if outs is not None else [None] * len(hashes)
        if len(targets) != len(hashes):
            raise StoreError(f"get_many: {len(hashes)} hashes but {len(targets)} output buffers")
        if self.io_threads == 1 or len(hashes) <= 1:
            return [self.get(h, out=o) for h, o in zip(hashes, targets, strict=True)]
        return list(self._executor().map(self.get, hashes, targets))

    def get_layer_many(
        self, hashes: Sequence[str], layer: int, outs: Sequence[np.ndarray | None] | None = None
    ) -> list[np.ndarray | None]:
        targets = list(outs) if outs is not None else [None] * len(hashes)
        if len(targets) != len(hashes):
            raise StoreError(f"get_layer_many: {len(hashes)} hashes but {len(targets)} output buffers")
        if self.io_threads == 1 or len(hashes) <= 1:
            return [self.get_layer(h, layer, out=o) for h, o in zip(hashes, targets, strict=True)]
        return list(self._executor().map(lambda h, o: self.get_layer(h, layer, out=o), hashes, targets))

    def put_many(self, items: Sequence[tuple[str, np.ndarray]],
                 parents: Sequence[str | None] | None = None) -> None:
        links = list(parents) if parents is not None else [None] * len(items)
        if len(links) != len(items):
            raise StoreError(f"put_many: {len(items)} blocks but {len(links)} parents")
        if self.io_threads == 1 or len(items) <= 1:
            for (h, block), p in zip(items, links, strict=True):
                self.put(h, block, parent=p)
            return
        list(self._executor().map(lambda item, p: self.put(item[0], item[1], parent=p),
                                  items, links))

    def close(self) -> None:
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.io_threads, thread_name_prefix="kvstore-io")
            return self._pool
