"""Prefill batch formation inside a prefill engine (DESIGN.md 3, "Inside a PE").

Attention runs data-parallel, so the engines of a node must finish attention together; a
batch is therefore sized by *predicted attention time*, not by token count. Requests are
taken FIFO while the predicted time of the batch stays within the compute quota (paper:
300 ms). The first request that does not fit whole is chunk-prefilled with the largest
chunk that still fits (binary search; time grows with chunk size), and the batch ends
there. Later batches continue it: the caller passes `already_prefilled_tokens`.

Progress guarantee: if not even one token of the head request fits the quota (a quota
smaller than the predictor's fixed overhead, or a huge context), the batch holds one
`align_tokens` chunk of it and `over_quota` is set, so a queue can never stall.
Decode engines put every request in the batch and need none of this.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from dualpath.core.errors import SchedulingError
from dualpath.core.frozen import reduce_frozen
from dualpath.scheduler.predictor import AttentionTimePredictor, Chunk
from dualpath.scheduler.types import RequestId


@dataclass(frozen=True, slots=True)
class PrefillWork:
    """One request queued at a prefill engine.

    cached_tokens: prefix whose KV is loaded (not computed); new_tokens: the tokens to
    compute in total; already_prefilled_tokens: of those, computed by earlier chunks.
    """

    request_id: RequestId
    cached_tokens: int
    new_tokens: int
    already_prefilled_tokens: int = 0

    def __post_init__(self) -> None:
        if self.cached_tokens < 0 or self.already_prefilled_tokens < 0:
            raise SchedulingError(f"prefill work {self.request_id!r}: negative token count")
        if self.new_tokens <= self.already_prefilled_tokens:
            raise SchedulingError(
                f"prefill work {self.request_id!r}: nothing left to prefill (a full cache hit "
                "still computes its last token: pass cached = prompt - 1)"
            )

    @property
    def context_tokens(self) -> int:
        return self.cached_tokens + self.already_prefilled_tokens

    @property
    def remaining_tokens(self) -> int:
        return self.new_tokens - self.already_prefilled_tokens

    def __reduce__(self) -> tuple[object, ...]:
        return reduce_frozen(self)  # pickle/copy, also when compiled


@dataclass(frozen=True, slots=True)
class BatchItem:
    """`chunk_tokens` new tokens of a request, attending to `context_tokens` earlier ones."""

    request_id: RequestId
    context_tokens: int
    chunk_tokens: int
    last_chunk: bool

    def __reduce__(self) -> tuple[object, ...]:
        return reduce_frozen(self)  # pickle/copy, also when compiled


@dataclass(frozen=True)
class BatchPlan:
    items: tuple[BatchItem, ...]
    predicted_s: float
    over_quota: bool = False

    @property
    def num_tokens(self) -> int:
        return sum(i.chunk_tokens for i in self.items)

    def __reduce__(self) -> tuple[object, ...]:
        return reduce_frozen(self)  # pickle/copy, also when compiled


def form_prefill_batch(
    queue: Iterable[PrefillWork],
    quota_s: float,
    predictor: AttentionTimePredictor,
    *,
    align_tokens: int = 1,
) -> BatchPlan:
    """Pack the head of `queue` (FIFO) into one batch within `quota_s` (see module doc).

    `queue` is iterated once and only as far as the batch reaches (it may be lazy).

    align_tokens: a partial chunk is a multiple of this (e.g. the KV block size, so chunks
    end on block boundaries); a request's final chunk takes whatever remains.
    """
    if quota_s <= 0 or align_tokens < 1:
        raise SchedulingError("form_prefill_batch: quota_s must be > 0 and align_tokens >= 1")
    chunks: list[Chunk] = []
    items: list[BatchItem] = []
    predicted = 0.0
    for work in queue:
        ctx, rem = work.context_tokens, work.remaining_tokens
        whole = predictor.predict_s([*chunks, (ctx, rem)])
        if whole <= quota_s:
            chunks.append((ctx, rem))
            items.append(BatchItem(work.request_id, ctx, rem, True))
            predicted = whole
            continue
        k = _largest_chunk(chunks, ctx, rem, quota_s, predictor, align_tokens)
        over = False
        if k == 0 and not items:
            k, over = min(align_tokens, rem), True
        if k > 0:
            chunks.append((ctx, k))
            items.append(BatchItem(work.request_id, ctx, k, k == rem))
            predicted = predictor.predict_s(chunks)
        return BatchPlan(tuple(items), predicted, over)
    return BatchPlan(tuple(items), predicted)


def _largest_chunk(chunks: list[Chunk], ctx: int, rem: int, quota_s: float,
                   predictor: AttentionTimePredictor, align: int) -> int:
    """Largest k = m·align < rem with the batch plus (ctx, k) within quota, else 0."""
    lo, hi = 0, (rem - 1) // align  # m in [lo, hi]; m = lo always fits (0 tokens added)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if predictor.predict_s([*chunks, (ctx, mid * align)]) <= quota_s:
            lo = mid
        else:
            hi = mid - 1
    return lo * align
