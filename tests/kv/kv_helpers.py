"""Helpers shared by the kv tests: a small geometry and reproducible random blocks."""

from __future__ import annotations

import numpy as np

from dualpath.kv import BlockGeometry

SMALL = BlockGeometry(num_layers=3, block_tokens=4, bytes_per_token_per_layer=16)


def random_block(seed: int, geometry: BlockGeometry = SMALL) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=geometry.full_block_shape, dtype=np.uint8)


def hex_hash(i: int) -> str:
    """A distinct, valid (64 hex chars) block hash for test block `i`."""
    return f"{i:064x}"[::-1]
