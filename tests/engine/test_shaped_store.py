"""Storage traffic through the SNIC: counted per direction, the SNIC rate holds for readers
in several threads."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
from rates import assert_shaped_rate

from dualpath.engine.shaped_store import ShapedStore
from dualpath.kv import BlockGeometry, MemoryKVStore
from dualpath.kv.block_value import value_bytes
from dualpath.transfer.nic import EmulatedNic, NicSpec

GEOMETRY = BlockGeometry(num_layers=4, block_tokens=64, bytes_per_token_per_layer=1024)  # 256 KiB


def _block(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, size=GEOMETRY.full_block_shape, dtype=np.uint8)

MB = 1_000_000


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
    # A block crosses the SNIC as stored (header + Full Block); a layer read moves its bytes.
    stored = value_bytes(GEOMETRY, "h1")
    assert stored > GEOMETRY.full_block_bytes
    assert lanes["tx.kv"].bytes == 3 * stored
    assert lanes["rx.kv"].bytes == stored + GEOMETRY.layer_block_bytes
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
    assert_shaped_rate(total / elapsed, 50 * MB)
