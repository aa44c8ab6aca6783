"""Prefill batch formation inside one PE (DESIGN.md 3, "Inside a PE").

Requests are packed FIFO while the batch's predicted attention time stays within the
quota; the request that overflows is chunk-prefilled with the largest chunk that fits
(binary search over whole blocks of `block_tokens`). `kv_limit_tokens` additionally bounds the prefix tokens whose KV must sit
in HBM at once (the non-layerwise `basic` rung loads whole prefixes first).

Pure: the caller passes the queue as (context tokens, remaining new tokens, prefix tokens)
and gets back how many new tokens of each head request go into the batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence


def form_batch(
    queue: Sequence[tuple[int, int, int]],
    quota_s: float,
    attention_time_s: Callable[[int, int], float],
    kv_limit_tokens: float = float("inf"),
    block_tokens: int = 64,
) -> list[int]:
    """Chunk sizes for the head of `queue`; always at least one token of the first entry."""
    chunks: list[int] = []
    used_s = 0.0
    kv_used = 0
    for ctx, remaining, prefix in queue:
        if chunks and kv_used + prefix + remaining > kv_limit_tokens:
            break
        t = attention_time_s(ctx, remaining)
        if used_s + t <= quota_s:
            chunks.append(remaining)
            used_s += t
            kv_used += prefix + remaining
            continue
        # Largest chunk, in whole blocks, with used + time(chunk) <= quota.
        lo, hi = 0, remaining // block_tokens
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if used_s + attention_time_s(ctx, mid * block_tokens) <= quota_s:
                lo = mid
            else:
                hi = mid - 1
        if lo > 0:
            chunks.append(lo * block_tokens)
        elif not chunks:
            chunks.append(min(remaining, block_tokens))  # over quota: still make progress
        break
    return chunks
