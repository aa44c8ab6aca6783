"""Full Blocks and Layer Blocks: the two byte layouts of stored KV (contract 1).

A **Full Block** is a C-contiguous uint8 array `[num_layers, block_tokens, bytes_per_token_per_layer]`
(storage always holds these). A **Layer Block** is `[1, block_tokens, bytes_per_token_per_layer]`
(what layerwise prefill streams). Layer l of a Full Block is the contiguous byte range
`[l * layer_block_bytes, (l + 1) * layer_block_bytes)`, so splitting is free (views) and
concatenating the Layer Blocks back on axis 0 gives the Full Block byte for byte.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dualpath.core.errors import StoreError
from dualpath.core.model_config import ModelConfig


class BlockLayoutError(StoreError, ValueError):
    """An array handed to kv/ does not have the Full/Layer Block shape or dtype it must have."""


@dataclass(frozen=True)
class BlockGeometry:
    """Shape of the KV of one block: layers x tokens x bytes of one token in one layer."""

    num_layers: int
    block_tokens: int
    bytes_per_token_per_layer: int

    def __post_init__(self) -> None:
        for name in ("num_layers", "block_tokens", "bytes_per_token_per_layer"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise BlockLayoutError(f"BlockGeometry.{name} must be a positive int, got {value!r}")

    @classmethod
    def from_model_config(cls, cfg: ModelConfig, block_tokens: int = 64) -> BlockGeometry:
        return cls(cfg.num_layers, block_tokens, cfg.kv_bytes_per_token_per_layer)

    @property
    def layer_block_bytes(self) -> int:
        return self.block_tokens * self.bytes_per_token_per_layer

    @property
    def full_block_bytes(self) -> int:
        return self.num_layers * self.layer_block_bytes

    @property
    def full_block_shape(self) -> tuple[int, int, int]:
        return (self.num_layers, self.block_tokens, self.bytes_per_token_per_layer)

    @property
    def layer_block_shape(self) -> tuple[int, int, int]:
        return (1, self.block_tokens, self.bytes_per_token_per_layer)

    def empty_full_block(self) -> np.ndarray:
        """An uninitialised, page-aligned Full Block (direct I/O can read straight into it)."""
        return aligned_empty(self.full_block_shape)

    def empty_layer_block(self) -> np.ndarray:
        return aligned_empty(self.layer_block_shape)


PAGE_ALIGN_BYTES = 4096  # page size / the strictest logical block size O_DIRECT asks for


def aligned_empty(shape: tuple[int, ...], align_bytes: int = PAGE_ALIGN_BYTES) -> np.ndarray:
    """An uninitialised C-contiguous uint8 array whose first byte is `align_bytes`-aligned.

    Engines should allocate their block buffers with this: `FileKVStore` reads into an
    aligned buffer with O_DIRECT (no page-cache copy) and falls back to buffered reads
    for any other buffer.
    """
    nbytes = int(np.prod(shape, dtype=np.int64))
    raw = np.empty(nbytes + align_bytes, dtype=np.uint8)
    start = -raw.ctypes.data % align_bytes
    return raw[start : start + nbytes].reshape(shape)


def check_full_block(block: np.ndarray, geometry: BlockGeometry, what: str = "Full Block") -> None:
    """Raise BlockLayoutError unless `block` is a C-contiguous uint8 array of the Full Block shape."""
    _check(block, geometry.full_block_shape, what)


def check_layer_block(block: np.ndarray, geometry: BlockGeometry, what: str = "Layer Block") -> None:
    """Raise BlockLayoutError unless `block` is a C-contiguous uint8 `[1, tokens, bytes]` array."""
    _check(block, geometry.layer_block_shape, what)


def _check(block: object, shape: tuple[int, int, int], what: str) -> None:
    if not isinstance(block, np.ndarray):
        raise BlockLayoutError(f"{what} must be a numpy array, got {type(block).__name__}")
    if block.dtype != np.uint8:
        raise BlockLayoutError(f"{what} must have dtype uint8, got {block.dtype}")
    if block.shape != shape:
        raise BlockLayoutError(f"{what} must have shape {shape}, got {block.shape}")
    if not block.flags.c_contiguous:
        raise BlockLayoutError(f"{what} must be C-contiguous")


def split_layers(full: np.ndarray, geometry: BlockGeometry) -> list[np.ndarray]:
    """The Layer Blocks of a Full Block, as views (no copy): `full[l : l + 1]` for each layer."""
    check_full_block(full, geometry)
    return [full[layer : layer + 1] for layer in range(geometry.num_layers)]


def layer_view(full: np.ndarray, geometry: BlockGeometry, layer: int) -> np.ndarray:
    """Layer Block `layer` of a Full Block, as a view (no copy)."""
    check_full_block(full, geometry)
    check_layer_index(layer, geometry)
    return full[layer : layer + 1]


def concat_layers(
    layers: Sequence[np.ndarray], geometry: BlockGeometry, out: np.ndarray | None = None
) -> np.ndarray:
    """Join Layer Blocks (in layer order) into one Full Block, into `out` if given.

    If the Layer Blocks already are consecutive views of one Full Block (as `split_layers`
    returns them), that Full Block is returned without copying.
    """
    if len(layers) != geometry.num_layers:
        raise BlockLayoutError(
            f"need {geometry.num_layers} Layer Blocks to make a Full Block, got {len(layers)}"
        )
    for i, layer_block in enumerate(layers):
        check_layer_block(layer_block, geometry, f"Layer Block {i}")
    if out is None:
        base = _common_base(layers, geometry)
        if base is not None:
            return base
        out = geometry.empty_full_block()
    else:
        check_full_block(out, geometry, "output Full Block")
    np.concatenate(layers, axis=0, out=out)
    return out


def check_layer_index(layer: int, geometry: BlockGeometry) -> None:
    if not 0 <= layer < geometry.num_layers:
        raise BlockLayoutError(f"layer {layer} out of range [0, {geometry.num_layers})")


def _common_base(layers: Sequence[np.ndarray], geometry: BlockGeometry) -> np.ndarray | None:
    """A zero-copy Full Block view over the Layer Blocks if they lie back to back in one buffer."""
    base = layers[0].base
    if not isinstance(base, np.ndarray) or base.dtype != np.uint8 or not base.flags.c_contiguous:
        return None
    start = layers[0].ctypes.data
    step = geometry.layer_block_bytes
    for i, layer_block in enumerate(layers):
        if layer_block.base is not base or layer_block.ctypes.data != start + i * step:
            return None
    offset = start - base.ctypes.data
    flat = base.reshape(-1)
    if offset < 0 or offset + geometry.full_block_bytes > flat.size:
        return None
    return flat[offset : offset + geometry.full_block_bytes].reshape(geometry.full_block_shape)
