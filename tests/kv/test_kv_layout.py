"""Full Block <-> Layer Blocks: byte-for-byte identity, views, validation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dualpath.core.model_config import ModelConfig
from dualpath.kv import BlockGeometry, BlockLayoutError, concat_layers, layer_view, split_layers

geometries = st.builds(
    BlockGeometry,
    num_layers=st.integers(1, 6),
    block_tokens=st.integers(1, 8),
    bytes_per_token_per_layer=st.integers(1, 24),
)


@settings(max_examples=60, deadline=None)
@given(geometry=geometries, seed=st.integers(0, 2**32 - 1))
def test_split_then_concat_is_identity(geometry: BlockGeometry, seed: int) -> None:
    full = np.random.default_rng(seed).integers(0, 256, geometry.full_block_shape, dtype=np.uint8)
    layers = split_layers(full, geometry)
    assert len(layers) == geometry.num_layers
    for i, layer in enumerate(layers):
        assert layer.shape == geometry.layer_block_shape
        assert np.shares_memory(layer, full)  # views, not copies
        assert layer.tobytes() == full.tobytes()[i * geometry.layer_block_bytes : (i + 1) * geometry.layer_block_bytes]
    # Views of one block come back as that block, without copying.
    same = concat_layers(layers, geometry)
    assert same.ctypes.data == full.ctypes.data and np.shares_memory(same, full)
    assert np.array_equal(same, full)
    aligned = geometry.empty_full_block()
    aligned[...] = full
    view = concat_layers(split_layers(aligned, geometry), geometry)
    assert view.ctypes.data == aligned.ctypes.data and np.array_equal(view, full)
    # Independent copies are concatenated into a new block with the same bytes.
    copies = [layer.copy() for layer in layers]
    joined = concat_layers(copies, geometry)
    assert joined.tobytes() == full.tobytes()
    out = geometry.empty_full_block()
    assert concat_layers(copies, geometry, out=out) is out
    assert np.array_equal(out, full)


def test_geometry_sizes_and_model_config() -> None:
    cfg = ModelConfig(name="smol", vocab_size=100, hidden_size=576, intermediate_size=1536,
                      num_layers=30, num_heads=9, num_kv_heads=3, head_dim=64)
    g = BlockGeometry.from_model_config(cfg, block_tokens=64)
    assert g == BlockGeometry(30, 64, 2 * 3 * 64 * 4)
    assert g.layer_block_bytes == 64 * 1536
    assert g.full_block_bytes == 30 * 64 * 1536
    assert g.full_block_shape == (30, 64, 1536)
    assert g.layer_block_shape == (1, 64, 1536)


def test_layer_view_is_a_view(geometry: BlockGeometry) -> None:
    full = np.arange(geometry.full_block_bytes, dtype=np.uint64).astype(np.uint8).reshape(geometry.full_block_shape)
    v = layer_view(full, geometry, 2)
    assert np.shares_memory(v, full) and np.array_equal(v[0], full[2])
    with pytest.raises(BlockLayoutError, match="out of range"):
        layer_view(full, geometry, geometry.num_layers)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda g: np.zeros(g.full_block_shape, dtype=np.float32), "dtype uint8"),
        (lambda g: np.zeros((g.num_layers + 1, g.block_tokens, g.bytes_per_token_per_layer), np.uint8), "shape"),
        (lambda g: np.zeros(g.full_block_shape[::-1], np.uint8).T, "C-contiguous"),
        (lambda g: [0, 1, 2], "numpy array"),
    ],
)
def test_bad_blocks_rejected_with_clear_errors(
    geometry: BlockGeometry, make: Callable[[BlockGeometry], Any], message: str
) -> None:
    with pytest.raises(BlockLayoutError, match=message):
        split_layers(make(geometry), geometry)


def test_concat_needs_every_layer(geometry: BlockGeometry) -> None:
    layers = [geometry.empty_layer_block() for _ in range(geometry.num_layers - 1)]
    with pytest.raises(BlockLayoutError, match=f"need {geometry.num_layers}"):
        concat_layers(layers, geometry)


@pytest.mark.parametrize("bad", [0, -1])
def test_geometry_validates(bad: int) -> None:
    with pytest.raises(BlockLayoutError):
        BlockGeometry(bad, 4, 4)
