"""Prefill batch formation in the simulator: the scheduler's `form_prefill_batch`, unchanged.

`CostAttentionPredictor` gives it the simulator's attention-time model (MLA / sparse
attention aware, `CostModel.attention_time_s`); `form_batch` adapts a PE's ready queue:
it also applies the HBM bound of the non-layerwise `basic` rung (the prefixes of a batch
must fit in the HBM left for KV; the first request always goes in), which the scheduler's
former does not know about.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from dualpath.scheduler.batching import PrefillWork, form_prefill_batch
from dualpath.scheduler.predictor import Chunk


class CostAttentionPredictor:
    """`AttentionTimePredictor` over the simulator's cost model: sum of chunk times."""

    def __init__(self, attention_time_s: Callable[[int, int], float]) -> None:
        self._t = attention_time_s

    def predict_s(self, chunks: Sequence[Chunk]) -> float:
        t = self._t
        return sum(t(c, n) for c, n in chunks)


def form_batch(
    queue: Sequence[tuple[int, int, int]],
    quota_s: float,
    attention_time_s: Callable[[int, int], float],
    kv_limit_tokens: float = float("inf"),
    block_tokens: int = 64,
) -> list[int]:
    """Chunk sizes for the head of `queue` = [(context, remaining new tokens, prefix), ...].

    Always at least one token of the first entry (progress guarantee of the scheduler's
    former).
    """
    works: list[PrefillWork] = []
    kv_used = 0
    for i, (ctx, remaining, prefix) in enumerate(queue):
        if works and kv_used + prefix + remaining > kv_limit_tokens:
            break
        kv_used += prefix + remaining
        works.append(PrefillWork(i, ctx, remaining))
    plan = form_prefill_batch(works, quota_s, CostAttentionPredictor(attention_time_s),
                              align_tokens=block_tokens)
    return [item.chunk_tokens for item in plan.items]
