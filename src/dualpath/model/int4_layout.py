"""Reading 4-bit codes back out of `torch._convert_weight_to_int4pack_for_cpu`'s packed weight.

Why: the int4 kernel is a fast GEMV but a slow GEMM (about 45 us per row of a 1536 x 576
weight, 5-7x slower than a bfloat16 GEMM at prefill sizes), so for many rows at once
`quant.Int4Linear` dequantizes the weight on the fly and runs a dense bfloat16 matmul. That
needs the codes, and holding them twice would double the weights' memory.

The packed layout is ATen's (aten/src/ATen/native/cpu/int4mm_kernel.cpp) and depends on the
CPU kernel torch dispatches to: rows are packed in blocks of BLOCK_N (64 with AVX-512, 32
otherwise); in a full block byte `k * BLOCK_N/2 + j` holds row j (low nibble) and row
j + BLOCK_N/2 (high nibble); a partial last block packs consecutive row pairs. Rather than trust
that, `packed_layout()` packs a probe once per process and keeps the first candidate that
reads it back exactly; if none does, `unpack` returns None and callers use the kernel.
"""

from __future__ import annotations

import functools

import torch

_CANDIDATES = (64, 32)  # BLOCK_N of the AVX-512 and the AVX2 / scalar kernels


def _unpack(packed: torch.Tensor, n: int, k: int, block_n: int) -> torch.Tensor:
    flat = packed.reshape(-1)
    full = n // block_n
    parts = []
    if full:
        b = flat[: full * k * block_n // 2].reshape(full, k, block_n // 2)
        codes = torch.cat((b & 15, b >> 4), dim=2)  # [full, K, BLOCK_N]
        parts.append(codes.permute(0, 2, 1).reshape(full * block_n, k))
    tail = n - full * block_n
    if tail:
        b = flat[full * k * block_n // 2 :].reshape(k, tail // 2)
        pairs = torch.stack((b & 15, b >> 4), dim=2)  # [K, tail/2, 2]: rows 2m, 2m+1
        parts.append(pairs.reshape(k, tail).t())
    return torch.cat(parts) if len(parts) > 1 else parts[0]


@functools.cache
def packed_layout() -> int | None:
    """The BLOCK_N whose layout reproduces a probe packed by this process's torch, or None."""
    gen = torch.Generator().manual_seed(0)
    probes = [torch.randint(0, 16, (n, 64), generator=gen, dtype=torch.int32)
              for n in (64 + 32 + 16, 48, 128)]
    packed = [torch._convert_weight_to_int4pack_for_cpu(p, 1) for p in probes]
    for block_n in _CANDIDATES:
        if all(torch.equal(_unpack(q, p.shape[0], p.shape[1], block_n).to(torch.int32), p)
               for p, q in zip(probes, packed, strict=True)):
            return block_n
    return None


def unpack(packed: torch.Tensor, n: int, k: int) -> torch.Tensor | None:
    """Codes uint8 `[N, K]` (0..15) of a packed `[N, K]` weight, or None if the layout of
    this torch build is not one we know."""
    block_n = packed_layout()
    return None if block_n is None else _unpack(packed, n, k, block_n)
