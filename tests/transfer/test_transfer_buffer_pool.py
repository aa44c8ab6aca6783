"""The bounded host buffer: reservations never exceed capacity, releases return them."""

from __future__ import annotations

import threading

import pytest

from dualpath.core.errors import ConfigError, TransferError
from dualpath.transfer.buffer_pool import BufferPool


def test_reserve_release_accounting() -> None:
    pool = BufferPool("de", 1000)
    pool.reserve("r1", 600)
    with pytest.raises(TransferError, match="do not fit"):
        pool.reserve("r2", 500)
    pool.reserve("r2", 300)
    pool.reserve("r2", 100)  # adds to the reservation
    s = pool.stats()
    assert (s.reserved_bytes, s.owners, s.refused_reservations, s.peak_reserved_bytes) == (
        1000, 2, 1, 1000)
    assert pool.release("r1") == 600
    assert pool.release("r1") == 0
    assert pool.free_bytes == 600
    assert pool.release("r2") == 400 and pool.stats().reserved_bytes == 0
    with pytest.raises(TransferError):
        pool.reserve("r3", -1)


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


def test_bad_capacity() -> None:
    with pytest.raises(ConfigError):
        BufferPool("x", 0)
