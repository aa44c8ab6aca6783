"""Behaviour every KVStore shares, run against MemoryKVStore, FileKVStore and RedisKVStore alike
(the last on a real redis-server; skipped when it is not installed)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from kv_helpers import SMALL, hex_hash, random_block
from redis_helpers import isolated_url

from dualpath.kv import BlockGeometry, BlockLayoutError, FileKVStore, KVStore, MemoryKVStore
from dualpath.kv.redis_store import RedisKVStore

Factory = Callable[[BlockGeometry], KVStore]


@pytest.fixture(params=["memory", "file", "redis"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Factory:
    if request.param == "memory":
        return MemoryKVStore
    if request.param == "redis":
        url = isolated_url(request.getfixturevalue("redis_server"))
        return lambda g: RedisKVStore(url, g)
    return lambda g: FileKVStore(tmp_path / "store", g)


def test_round_trip_get_and_get_layer(make_store: Factory) -> None:
    store = make_store(SMALL)
    blocks = {hex_hash(i): random_block(i) for i in range(5)}
    for h, b in blocks.items():
        store.put(h, b)
    for h, b in blocks.items():
        got = store.get(h)
        assert got is not None and got.shape == SMALL.full_block_shape and got.dtype == np.uint8
        assert np.array_equal(got, b)
        for layer in range(SMALL.num_layers):
            lb = store.get_layer(h, layer)
            assert lb is not None and lb.shape == SMALL.layer_block_shape
            assert np.array_equal(lb[0], b[layer])
    s = store.stats()
    assert (s.puts, s.gets, s.get_hits, s.layer_hits) == (5, 5, 5, 5 * SMALL.num_layers)
    assert s.bytes_read == 5 * SMALL.full_block_bytes * 2


def test_get_into_caller_buffer(make_store: Factory) -> None:
    store = make_store(SMALL)
    b = random_block(7)
    store.put(hex_hash(7), b)
    out = SMALL.empty_full_block()
    assert store.get(hex_hash(7), out=out) is out and np.array_equal(out, b)
    lout = SMALL.empty_layer_block()
    assert store.get_layer(hex_hash(7), 1, out=lout) is lout and np.array_equal(lout[0], b[1])


def test_miss_is_none_and_counted(make_store: Factory) -> None:
    store = make_store(SMALL)
    assert store.get(hex_hash(1)) is None
    assert store.get_layer(hex_hash(1), 0) is None
    s = store.stats()
    assert (s.get_misses, s.layer_misses, s.corrupt_blocks) == (1, 1, 0)


def test_put_is_idempotent_and_returns_copies(make_store: Factory) -> None:
    store = make_store(SMALL)
    b = random_block(3)
    store.put(hex_hash(3), b)
    store.put(hex_hash(3), b)
    assert store.stats().puts_skipped == 1
    got = store.get(hex_hash(3))
    assert got is not None
    got[...] = 0  # the caller owns what it got; the store is unaffected
    again = store.get(hex_hash(3))
    assert again is not None and np.array_equal(again, b)


def test_longest_prefix_and_contains(make_store: Factory) -> None:
    store = make_store(SMALL)
    chain = [hex_hash(i) for i in range(6)]
    for h in chain[:3] + chain[4:5]:
        store.put(h, random_block(0))
    assert store.longest_prefix(chain) == 3
    assert store.longest_prefix(chain[1:]) == 2
    assert store.longest_prefix([]) == 0
    assert store.contains_many(chain) == [True, True, True, False, True, False]


def test_wrong_geometry_rejected(make_store: Factory) -> None:
    store = make_store(SMALL)
    other = BlockGeometry(SMALL.num_layers, SMALL.block_tokens * 2, SMALL.bytes_per_token_per_layer)
    with pytest.raises(BlockLayoutError, match="shape"):
        store.put(hex_hash(1), random_block(1, other))
    with pytest.raises(BlockLayoutError, match="dtype"):
        store.put(hex_hash(1), random_block(1).astype(np.int16))
    store.put(hex_hash(1), random_block(1))
    with pytest.raises(BlockLayoutError):
        store.get(hex_hash(1), out=np.empty(other.full_block_shape, np.uint8))
    with pytest.raises(BlockLayoutError, match="out of range"):
        store.get_layer(hex_hash(1), SMALL.num_layers)


def test_batches_match_single_calls(make_store: Factory) -> None:
    store = make_store(SMALL)
    items = [(hex_hash(i), random_block(i)) for i in range(6)]
    store.put_many(items[:5])
    hashes = [h for h, _ in items]
    got = store.get_many(hashes)
    for (_, block), g in zip(items[:5], got[:5], strict=True):
        assert g is not None and np.array_equal(g, block)
    assert got[5] is None
    outs = [SMALL.empty_full_block() for _ in hashes]
    got_into = store.get_many(hashes, outs)
    assert all(g is o for g, o in zip(got_into[:5], outs[:5], strict=True))
    assert store.stats().get_hits == 10
    store.close()


def test_layer_batches_match_single_calls(make_store: Factory) -> None:
    store = make_store(SMALL)
    blocks = {hex_hash(i): random_block(i) for i in range(4)}
    store.put_many(list(blocks.items()))
    hashes = [*blocks, hex_hash(99)]
    for layer in range(SMALL.num_layers):
        got = store.get_layer_many(hashes, layer)
        assert got[-1] is None
        for h, g in zip(blocks, got, strict=False):
            assert g is not None and np.array_equal(g[0], blocks[h][layer])
    outs = [SMALL.empty_layer_block() for _ in hashes]
    assert store.get_layer_many(hashes, 1, outs)[0] is outs[0]
    store.close()
