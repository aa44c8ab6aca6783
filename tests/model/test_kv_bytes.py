"""kv_bytes: the torch <-> Full/Layer Block byte conversions of contract 1."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dualpath.core.model_config import ModelConfig
from dualpath.model.kv_bytes import (
    full_block_to_layers,
    kv_from_bytes,
    kv_to_bytes,
    layers_to_full_block,
)


def _cfg(dtype: str) -> ModelConfig:
    return ModelConfig(name="t", vocab_size=300, hidden_size=32, intermediate_size=64,
                       num_layers=3, num_heads=4, num_kv_heads=2, head_dim=8, kv_dtype=dtype)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_round_trip_is_exact(dtype: str) -> None:
    cfg = _cfg(dtype)
    kv = torch.randn(7, 2, 2, 8, generator=torch.Generator().manual_seed(0)).to(
        getattr(torch, dtype))
    raw = kv_to_bytes(kv)
    assert raw.dtype == np.uint8
    assert raw.shape == (7, cfg.kv_bytes_per_token_per_layer)
    back = kv_from_bytes(raw, cfg)
    assert back.dtype == kv.dtype and back.shape == kv.shape
    assert torch.equal(back, kv)


def test_zero_copy_views() -> None:
    cfg = _cfg("float32")
    kv = torch.zeros(4, 2, 2, 8)
    raw = kv_to_bytes(kv)
    raw[0, :4] = np.frombuffer(np.float32(1.5).tobytes(), dtype=np.uint8)
    assert kv[0, 0, 0, 0].item() == 1.5  # the bytes are the tensor's memory
    back = kv_from_bytes(raw, cfg)
    back[1, 1, 1, 1] = 2.0
    assert kv[1, 1, 1, 1].item() == 2.0


def test_read_only_input_is_copied() -> None:
    cfg = _cfg("float32")
    raw = kv_to_bytes(torch.ones(2, 2, 2, 8)).copy()
    raw.flags.writeable = False
    assert torch.equal(kv_from_bytes(raw, cfg), torch.ones(2, 2, 2, 8))


def test_full_block_is_layer_blocks_concatenated() -> None:
    cfg = _cfg("bfloat16")
    gen = torch.Generator().manual_seed(1)
    layers = [torch.randn(5, 2, 2, 8, generator=gen).bfloat16() for _ in range(3)]
    block = layers_to_full_block(layers)
    assert block.shape == (3, 5, cfg.kv_bytes_per_token_per_layer)
    for i, layer in enumerate(layers):
        assert np.array_equal(block[i : i + 1][0], kv_to_bytes(layer))
    back = full_block_to_layers(block, cfg)
    assert all(torch.equal(a, b) for a, b in zip(back, layers, strict=True))
    # a Layer Block [1, T, B] is accepted as is
    assert torch.equal(kv_from_bytes(block[1:2], cfg), layers[1])


def test_wrong_shape_is_rejected() -> None:
    with pytest.raises(ValueError):
        kv_from_bytes(np.zeros((3, 10), dtype=np.uint8), _cfg("float32"))
    with pytest.raises(ValueError):
        kv_to_bytes(torch.zeros(3, 3, 2, 8))
