"""Prefill batch formation in the simulator: the scheduler's `form_prefill_batch`, unchanged.

`CostAttentionPredictor` gives it the simulator's attention-time model (MLA / sparse
attention aware, `CostModel.attention_time_s`); `form_batch` adapts a PE's ready queue:
it also applies the HBM bound of the non-layerwise `basic` rung (the prefixes of a batch
must fit in the HBM left for KV; the first request always goes in), which the scheduler's
former does not know about.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

from dualpath.scheduler.batching import PrefillWork, form_prefill_batch
from dualpath.scheduler.predictor import Chunk


class CostAttentionPredictor:
    """`AttentionTimePredictor` over the simulator's cost model: sum of chunk times.

    Batch formation asks for `[*batch, candidate]` again and again while the batch only
    grows, so the sums over the longest prefix seen so far are kept: a call costs one
    chunk evaluation plus a C-level prefix comparison, not a sum over the whole batch.
    """

    def __init__(self, attention_time_s: Callable[[int, int], float]) -> None:
        self._t = attention_time_s
        self._known: list[Chunk] = []
        self._sums: list[float] = [0.0]  # _sums[i] = time of _known[:i]

    def predict_s(self, chunks: Sequence[Chunk]) -> float:
        n = len(chunks)
        if n == 0:
            return 0.0
        t = self._t
        known, sums = self._known, self._sums
        k = n - 1
        if k > len(known) or list(chunks[:k]) != known[:k]:
            j, m = 0, min(k, len(known))
            while j < m and chunks[j] == known[j]:
                j += 1
            del known[j:]
            del sums[j + 1:]
            for c, new in chunks[j:k]:
                known.append((c, new))
                sums.append(sums[-1] + t(c, new))
        c, new = chunks[k]
        return sums[k] + t(c, new)


def form_batch(
    queue: Iterable[tuple[int, int, int]],
    quota_s: float,
    attention_time_s: Callable[[int, int], float],
    kv_limit_tokens: float = float("inf"),
    block_tokens: int = 64,
) -> list[int]:
    """Chunk sizes for the head of `queue` = [(context, remaining new tokens, prefix), ...].

    Always at least one token of the first entry (progress guarantee of the scheduler's
    former). `queue` is consumed lazily: only the entries the batch reaches are looked at.
    """
    plan = form_prefill_batch(_works(queue, kv_limit_tokens), quota_s,
                              CostAttentionPredictor(attention_time_s), align_tokens=block_tokens)
    return [item.chunk_tokens for item in plan.items]


def _works(queue: Iterable[tuple[int, int, int]], kv_limit_tokens: float) -> Iterator[PrefillWork]:
    kv_used = 0
    for i, (ctx, remaining, prefix) in enumerate(queue):
        if i and kv_used + prefix + remaining > kv_limit_tokens:
            return
        kv_used += prefix + remaining
        yield PrefillWork(i, ctx, remaining)
