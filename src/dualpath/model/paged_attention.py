"""Decode attention of one new token over KV that lies in several places, without gathering it.

A sequence's KV comes as segments: views `[T_i, 2, Hkv, D]` into the paged pool (one per run
of consecutive blocks) or into a dense buffer. The query's `Hq = Hkv * G` heads are folded
into `Hkv` heads of G query rows each (query head h uses KV head h // G, as Hugging Face's
`repeat_kv`), so attention is plain multi-head attention with no KV expansion. With one
segment that is a single SDPA call on the view; with several, each segment's partial result
and log-sum-exp come from the CPU flash kernel and are merged exactly
(`out = sum_i exp(lse_i - lse) * out_i`, `lse = logsumexp_i lse_i`), as flash-decoding does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

_flash_cpu = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu


def _heads(segment: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`[T, 2, H, D]` view -> K, V `[1, H, T, D]` views (strided, last dim contiguous)."""
    return (segment[:, 0].transpose(0, 1).unsqueeze(0),
            segment[:, 1].transpose(0, 1).unsqueeze(0))


def decode_attention(q: torch.Tensor, segments: Sequence[torch.Tensor]) -> torch.Tensor:
    """q `[Hq, D]` (one token, RoPE'd) over the KV in `segments` -> `[Hq * D]` in q's dtype.

    The segments together hold every position the token may see (itself included), in order.
    """
    hq, d = q.shape
    hkv = segments[0].shape[2]
    qh = q.reshape(hkv, hq // hkv, d).unsqueeze(0)  # [1, Hkv, G, D]
    if len(segments) == 1:
        k, v = _heads(segments[0])
        return F.scaled_dot_product_attention(qh, k, v).reshape(hq * d)
    outs, lses = [], []
    for segment in segments:
        k, v = _heads(segment)
        out, lse = _flash_cpu(qh, k, v, 0.0, False)[:2]
        outs.append(out.float())
        lses.append(lse.float())
    lse_all = torch.stack(lses)  # [S, 1, Hkv, G]
    weights = torch.softmax(lse_all, dim=0).unsqueeze(-1)
    merged = (torch.stack(outs) * weights).sum(dim=0)
    return merged.to(q.dtype).reshape(hq * d)
