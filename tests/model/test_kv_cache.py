"""PagedKVCache: allocate/free/can_allocate accounting, full-block reporting, data paths."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dualpath.core.errors import SchedulingError
from dualpath.model.kv_bytes import full_block_to_layers
from dualpath.model.kv_cache import PagedKVCache
from dualpath.model.kv_sequence import DenseKV


def test_allocation_accounting(tiny: tuple) -> None:
    model, _ = tiny
    cache = PagedKVCache(model.config, num_blocks=10, block_size=4)
    assert cache.can_allocate(40) and not cache.can_allocate(41)
    cache.allocate("a", 9)  # 3 blocks
    assert cache.num_free_blocks == 7
    assert len(cache.block_table("a")) == 3 and cache.capacity_tokens("a") == 12
    assert not cache.can_allocate(29) and cache.can_allocate(28)
    with pytest.raises(SchedulingError):
        cache.allocate("b", 29)
    assert cache.num_free_blocks == 7  # a refused allocation changes nothing
    with pytest.raises(SchedulingError):
        cache.allocate("a", 1)  # already allocated
    cache.allocate("b", 28)
    assert cache.num_free_blocks == 0
    assert not cache.can_allocate(1)
    assert cache.can_allocate(0)
    assert set(cache.block_table("a")).isdisjoint(cache.block_table("b"))
    cache.check_integrity()
    cache.free("a")
    assert cache.num_free_blocks == 3
    with pytest.raises(SchedulingError):
        cache.free("a")
    cache.free("b")
    assert cache.num_free_blocks == 10
    cache.check_integrity()


def test_append_grows_by_blocks(tiny: tuple) -> None:
    model, _ = tiny
    cache = PagedKVCache(model.config, num_blocks=3, block_size=4)
    cache.allocate("s", 4)
    cache.commit("s", 4)
    assert cache.can_append("s", 8) and not cache.can_append("s", 9)
    cache.append("s", 1)
    assert len(cache.block_table("s")) == 2 and cache.num_free_blocks == 1
    cache.append("s", 1)  # still room in block 2: no new block
    assert len(cache.block_table("s")) == 2
    with pytest.raises(SchedulingError):
        cache.append("s", 9)
    with pytest.raises(SchedulingError):
        cache.commit("s", 5)  # past reserved room


def test_full_block_reporting(tiny: tuple) -> None:
    model, _ = tiny
    cache = PagedKVCache(model.config, num_blocks=8, block_size=4)
    cache.allocate("s", 10, persisted_tokens=4)  # block 0 came from the store
    seq = cache.sequence("s")
    zeros = torch.zeros(10, 2, model.config.num_kv_heads, model.config.head_dim)
    for layer in range(model.config.num_layers):
        seq.write(layer, 0, zeros)
    seq.commit(10)
    assert cache.take_full_blocks("s") == [1]
    assert cache.take_full_blocks("s") == []
    cache.append("s", 2)
    seq.commit(2)  # 12 tokens -> block 2 full
    assert cache.take_full_blocks("s") == [2]
    with pytest.raises(SchedulingError):
        cache.export_block("s", 3)


def test_paged_decode_matches_dense_and_exports_blocks(tiny: tuple) -> None:
    model, _ = tiny
    bs = 8
    cache = PagedKVCache(model.config, num_blocks=32, block_size=bs)
    prompts = {"x": list(range(1, 20)), "y": list(range(50, 53))}
    dense = {}
    for sid, p in prompts.items():
        out = model.prefill(p)
        cache.allocate(sid, len(p))
        for layer, kv in enumerate(out.new_kv):
            cache.write(sid, layer, 0, kv)
        cache.commit(sid, len(p))
        dense[sid] = DenseKV.from_layers(model.config, out.new_kv)
    full_reported = {sid: cache.take_full_blocks(sid) for sid in prompts}
    assert full_reported == {"x": [0, 1], "y": []}
    tokens = {"x": 3, "y": 4}
    for _ in range(6):
        for sid in prompts:
            assert cache.can_append(sid, 1)
            cache.append(sid, 1)
        paged = model.decode(list(tokens.values()), [cache.sequence(s) for s in prompts])
        for b, sid in enumerate(prompts):
            ref = model.decode([tokens[sid]], [dense[sid]])[0]
            assert float((paged[b] - ref).abs().max()) <= 1e-4
        tokens = {sid: int(paged[b].argmax()) for b, sid in enumerate(prompts)}
    assert cache.num_tokens("x") == 25 and cache.num_tokens("y") == 9
    assert cache.take_full_blocks("x") == [2] and cache.take_full_blocks("y") == [0]
    # exported Full Block == the cache's KV of those tokens, byte for byte
    block = cache.export_block("x", 2)
    assert block.dtype == np.uint8
    assert block.shape == (model.config.num_layers, bs, model.config.kv_bytes_per_token_per_layer)
    for layer, kv in enumerate(full_block_to_layers(block, model.config)):
        assert torch.equal(kv, cache.read("x", layer)[2 * bs : 3 * bs])
        assert torch.allclose(kv, dense["x"].layer_kv(layer)[2 * bs : 3 * bs], atol=1e-4)
    # import into a fresh sequence and read back
    cache.allocate("z", 2 * bs)
    cache.import_blocks("z", [cache.export_block("x", 0), cache.export_block("x", 1)])
    assert cache.num_tokens("z") == 2 * bs
    for layer in range(model.config.num_layers):
        assert torch.equal(cache.read("z", layer), cache.read("x", layer)[: 2 * bs])
    cache.check_integrity()
