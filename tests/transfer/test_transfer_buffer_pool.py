"""The bounded host buffer: ask before reserving, arrays counted against reservations."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from dualpath.core.errors import ConfigError, TransferError
from dualpath.transfer.buffer_pool import BufferPool


def test_reserve_put_release_accounting() -> None:
    pool = BufferPool("de", 1000)
    assert pool.can_reserve(600)
    pool.reserve("r1", 600)
    assert not pool.can_reserve(500)
    with pytest.raises(TransferError, match="do not fit"):
        pool.reserve("r2", 500)
    pool.reserve("r2", 400)
    pool.put("r1", ("blk", 0), np.zeros(300, np.uint8))
    pool.put("r1", ("blk", 1), np.zeros(300, np.uint8))
    with pytest.raises(TransferError, match="would use"):
        pool.put("r1", ("blk", 2), np.zeros(1, np.uint8))
    pool.put("r1", ("blk", 1), np.zeros(200, np.uint8))  # replacing returns the old bytes
    with pytest.raises(TransferError, match="no reservation"):
        pool.put("r3", "x", np.zeros(1, np.uint8))
    s = pool.stats()
    assert (s.reserved_bytes, s.used_bytes, s.owners, s.arrays) == (1000, 500, 2, 2)
    assert s.refused_reservations == 1 and s.peak_reserved_bytes == 1000
    assert pool.keys("r1") == [("blk", 0), ("blk", 1)]
    popped = pool.pop("r1", ("blk", 0))
    assert popped is not None and popped.nbytes == 300
    assert pool.get("r1", ("blk", 0)) is None and pool.stats().used_bytes == 200
    pool.check_integrity()
    assert pool.release("r1") == 600
    assert pool.release("r1") == 0
    assert pool.free_bytes == 600
    assert pool.stats().used_bytes == 0
    pool.check_integrity()


def test_concurrent_owners_never_exceed_capacity() -> None:
    pool = BufferPool("pe", 10_000)
    granted: list[int] = []
    lock = threading.Lock()

    def worker(w: int) -> None:
        for i in range(200):
            owner = (w, i)
            try:
                pool.reserve(owner, 700)
            except TransferError:
                continue
            pool.put(owner, 0, np.zeros(700, np.uint8))
            assert pool.stats().reserved_bytes <= 10_000
            with lock:
                granted.append(1)
            pool.release(owner)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert granted
    s = pool.stats()
    assert s.reserved_bytes == 0 and s.owners == 0 and s.peak_reserved_bytes <= 10_000
    pool.check_integrity()


def test_bad_capacity() -> None:
    with pytest.raises(ConfigError):
        BufferPool("x", 0)
