"""Where a sequence's KV lives while it decodes: the protocol the model reads and writes.

`Transformer.decode` only talks to `KVSequence`; `DenseKV` (growable per-layer tensors, used by
`dualpath generate` and tests) and `PagedKVCache.sequence(...)` (the engines' block pool)
implement it. Positions are absolute token indices; `num_tokens` counts committed tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from dualpath.core.model_config import ModelConfig
from dualpath.model.kv_bytes import torch_dtype


class KVSequence(Protocol):
    """One sequence's KV across all layers.

    Mutating calls: `write` (stores KV at positions, does not change `num_tokens`) and
    `commit` (advances `num_tokens` once every layer has been written).
    """

    @property
    def num_tokens(self) -> int: ...

    def write(self, layer: int, start_pos: int, kv: torch.Tensor) -> None:
        """Store `kv` `[n, 2, H, D]` of `layer` at positions `start_pos .. start_pos+n-1`."""

    def read(self, layer: int, end_pos: int) -> torch.Tensor:
        """KV `[end_pos, 2, H, D]` of `layer` for positions `0 .. end_pos-1` (may copy)."""
        ...

    def segments(self, layer: int, end_pos: int) -> list[torch.Tensor]:
        """The same KV as `read`, as views `[T_i, 2, H, D]` (in position order) of where it is
        stored, so decode attention reads it without a copy. Read-only for the caller."""
        ...

    def commit(self, n_tokens: int) -> None:
        """Mark `n_tokens` more positions as complete in every layer."""


class DenseKV:
    """A `KVSequence` backed by one growable tensor per layer (capacity doubles)."""

    def __init__(self, config: ModelConfig, capacity_tokens: int = 256) -> None:
        self.config = config
        dtype = torch_dtype(config.kv_dtype)
        shape = (max(1, capacity_tokens), 2, config.num_kv_heads, config.head_dim)
        self._layers = [torch.empty(shape, dtype=dtype) for _ in range(config.num_layers)]
        self._num_tokens = 0

    @classmethod
    def from_layers(cls, config: ModelConfig, layer_kvs: Sequence[torch.Tensor]) -> DenseKV:
        """A DenseKV holding the given per-layer `[T, 2, H, D]` KV (all layers the same T)."""
        tokens = int(layer_kvs[0].shape[0]) if layer_kvs else 0
        kv = cls(config, capacity_tokens=max(256, 2 * tokens))
        for layer, t in enumerate(layer_kvs):
            kv.write(layer, 0, t)
        kv.commit(tokens)
        return kv

    @property
    def num_tokens(self) -> int:
        return self._num_tokens

    def write(self, layer: int, start_pos: int, kv: torch.Tensor) -> None:
        end = start_pos + kv.shape[0]
        buf = self._layers[layer]
        if end > buf.shape[0]:
            new = torch.empty((max(end, 2 * buf.shape[0]), *buf.shape[1:]), dtype=buf.dtype)
            new[: buf.shape[0]] = buf
            self._layers[layer] = buf = new
        buf[start_pos:end] = kv

    def read(self, layer: int, end_pos: int) -> torch.Tensor:
        return self._layers[layer][:end_pos]

    def segments(self, layer: int, end_pos: int) -> list[torch.Tensor]:
        return [self._layers[layer][:end_pos]]

    def commit(self, n_tokens: int) -> None:
        self._num_tokens += n_tokens

    def layer_kv(self, layer: int) -> torch.Tensor:
        """The committed KV `[num_tokens, 2, H, D]` of one layer (a view)."""
        return self._layers[layer][: self._num_tokens]
