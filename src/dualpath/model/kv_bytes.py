"""Conversion between the model's KV tensors and the byte layouts of the KV store (contract 1).

One layer's KV for T tokens is a contiguous tensor `[T, 2, num_kv_heads, head_dim]` (index 0 =
K after RoPE, 1 = V) of dtype `ModelConfig.kv_dtype`; its bytes are `[T, bytes_per_token]`
uint8. A Full Block is `[num_layers, block_tokens, bytes_per_token]`, a Layer Block is
`[1, block_tokens, bytes_per_token]`. Conversions go through `torch.uint8` views (numpy has no
bfloat16), so they are zero-copy whenever the input is contiguous and writable.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from dualpath.core.errors import UserInputError
from dualpath.core.model_config import ModelConfig

_TORCH_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a `ModelConfig.kv_dtype` name."""
    try:
        return _TORCH_DTYPES[name]
    except KeyError:
        raise UserInputError(f"unknown dtype {name!r}; choose one of {sorted(_TORCH_DTYPES)}") from None


def dtype_name(dtype: torch.dtype) -> str:
    """Inverse of `torch_dtype`."""
    for name, value in _TORCH_DTYPES.items():
        if value == dtype:
            return name
    raise UserInputError(f"unsupported dtype {dtype}; choose one of {sorted(_TORCH_DTYPES)}")


def kv_to_bytes(kv: torch.Tensor) -> np.ndarray:
    """`[T, 2, H, D]` tensor -> `[T, bytes_per_token]` uint8 array (a view when contiguous, on CPU)."""
    if kv.dim() != 4 or kv.shape[1] != 2:
        raise ValueError(f"expected a KV tensor [T, 2, H, D], got shape {tuple(kv.shape)}")
    flat = kv.detach().to("cpu").contiguous().view(torch.uint8)
    per_token = 2 * kv.shape[2] * kv.shape[3] * kv.element_size()
    return flat.reshape(kv.shape[0], per_token).numpy()


def kv_from_bytes(arr: np.ndarray, config: ModelConfig) -> torch.Tensor:
    """`[T, bytes_per_token]` (or `[1, T, bytes_per_token]`) uint8 -> `[T, 2, H, D]` tensor.

    Shares memory with `arr` when it is contiguous and writable; read-only arrays (e.g. a
    read-only memory map) are copied because torch tensors cannot be read-only.
    """
    if arr.dtype != np.uint8:
        raise ValueError(f"expected uint8 bytes, got {arr.dtype}")
    per_token = config.kv_bytes_per_token_per_layer
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2 or arr.shape[1] != per_token:
        raise ValueError(
            f"expected bytes [T, {per_token}] for {config.name}, got shape {arr.shape}"
        )
    if not (arr.flags.c_contiguous and arr.flags.writeable):
        arr = np.array(arr, order="C", copy=True)
    tokens = arr.shape[0]
    t = torch.from_numpy(arr).view(torch_dtype(config.kv_dtype))
    return t.reshape(tokens, 2, config.num_kv_heads, config.head_dim)


def layers_to_full_block(layer_kvs: Sequence[torch.Tensor]) -> np.ndarray:
    """Per-layer `[T, 2, H, D]` tensors -> one Full Block `[num_layers, T, bytes_per_token]`."""
    return np.stack([kv_to_bytes(kv) for kv in layer_kvs], axis=0)


def full_block_to_layers(block: np.ndarray, config: ModelConfig) -> list[torch.Tensor]:
    """A Full Block (or several concatenated on the token axis) -> per-layer `[T, 2, H, D]`."""
    if block.ndim != 3 or block.shape[0] != config.num_layers:
        raise ValueError(
            f"expected a Full Block [{config.num_layers}, T, bytes], got shape {block.shape}"
        )
    return [kv_from_bytes(block[layer], config) for layer in range(config.num_layers)]
