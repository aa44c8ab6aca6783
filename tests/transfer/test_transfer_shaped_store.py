"""Storage traffic through the SNIC: counted per direction, the SNIC rate holds for readers
in several threads, the read queue is shared across processes."""

from __future__ import annotations

import threading
import time
from multiprocessing.context import SpawnContext
from pathlib import Path

import numpy as np
import pytest
from transfer_helpers import MB

from dualpath.core.errors import TransferError
from dualpath.kv import BlockGeometry, MemoryKVStore
from dualpath.transfer.nic import EmulatedNic, NicSpec
from dualpath.transfer.shaped_store import ReadQueue, ShapedStore

GEOMETRY = BlockGeometry(num_layers=4, block_tokens=64, bytes_per_token_per_layer=1024)  # 256 KiB


def _block(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, size=GEOMETRY.full_block_shape, dtype=np.uint8)


def test_store_traffic_is_counted_on_the_snic(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    snic = EmulatedNic(NicSpec("snic", str(tmp_path / "snic.nic"), None))
    store = ShapedStore(MemoryKVStore(GEOMETRY), snic)
    blocks = {f"h{i}": _block(rng) for i in range(3)}
    for h, b in blocks.items():
        store.put(h, b)
    assert store.longest_prefix(["h0", "h1", "zz", "h2"]) == 2
    assert store.contains_many(["h2", "zz"]) == [True, False]
    got = store.get("h1")
    assert got is not None
    np.testing.assert_array_equal(got, blocks["h1"])
    layer = store.get_layer("h2", 3)
    assert layer is not None
    np.testing.assert_array_equal(layer, blocks["h2"][3:4])
    assert store.get("missing") is None
    lanes = snic.stats().lanes
    assert lanes["tx.kv"].bytes == 3 * GEOMETRY.full_block_bytes
    assert lanes["rx.kv"].bytes == GEOMETRY.full_block_bytes + GEOMETRY.layer_block_bytes
    assert store.stats().puts == 3


def test_readers_share_the_snic_rate(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    snic = EmulatedNic(NicSpec("snic", str(tmp_path / "snic.nic"), 50 * MB))
    inner = MemoryKVStore(GEOMETRY)
    for i in range(8):
        inner.put(f"h{i}", _block(rng))
    store = ShapedStore(inner, snic)
    reads_per_thread = 40  # 3 threads x 40 x 256 KiB = 31 MB: ~0.6 s

    def reader(seed: int) -> None:
        for i in range(reads_per_thread):
            assert store.get(f"h{(seed + i) % 8}") is not None

    threads = [threading.Thread(target=reader, args=(s,)) for s in range(3)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    total = 3 * reads_per_thread * GEOMETRY.full_block_bytes
    assert total / elapsed == pytest.approx(50 * MB, rel=0.10)


def _queue_child(path: str, tokens: int) -> None:
    q = ReadQueue(path)
    q.add(tokens)
    q.close()


def test_read_queue_is_shared_across_processes(tmp_path: Path, spawn: SpawnContext) -> None:
    path = str(tmp_path / "node0.readq")
    q = ReadQueue(path)
    children = [spawn.Process(target=_queue_child, args=(path, 100 * (i + 1))) for i in range(3)]
    for c in children:
        c.start()
    for c in children:
        c.join(timeout=60)
        assert c.exitcode == 0
    assert q.tokens() == 600 and q.reads() == 3
    q.remove(100)
    with q.pending(1000):
        assert q.tokens() == 1500
    assert q.tokens() == 500 and q.reads() == 2 and q.total_tokens() == 1600
    q.remove(200, finished=False)
    assert q.reads() == 2
    with pytest.raises(TransferError):
        q.remove(10_000)
