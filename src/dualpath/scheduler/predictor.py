"""Attention-time predictors for prefill batch formation (DESIGN.md 3, "Inside a PE").

Attention FLOPs of one request chunk with `c` tokens of context already in KV (cached plus
earlier chunks) and `n` new tokens: new token i (0-based) attends to c + i + 1 keys, and
each (query, key) pair costs 2·d FLOPs for Q·K and 2·d for the weighted sum of V, per head
and layer, so

    F(c, n) = 4 · layers · heads · head_dim · n · (c + (n + 1) / 2)

(`heads` = query heads; with GQA the FLOPs follow the query heads). A batch's predicted time
is `overhead_s + Σ F / flops_per_s` — attention of the requests in a batch runs one after
another on the engine's GPU, so FLOPs add up; `overhead_s` is the fixed per-batch cost.
`FlopsAttentionPredictor.fit` finds both by least squares from profiled (FLOPs, seconds)
samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from dualpath.core.errors import ConfigError
from dualpath.core.frozen import reduce_frozen

Chunk = tuple[int, int]
"""(context_tokens, new_tokens) of one request in a batch."""


class AttentionTimePredictor(Protocol):
    """Who calls: `form_prefill_batch` (in a prefill engine or the simulator)."""

    def predict_s(self, chunks: Sequence[Chunk]) -> float:
        """Predicted attention time, in seconds, of one batch made of `chunks`."""
        ...


def attention_flops(context_tokens: int, new_tokens: int, num_layers: int, num_heads: int,
                    head_dim: int) -> float:
    """F(c, n) of the module docstring."""
    n = new_tokens
    return 4.0 * num_layers * num_heads * head_dim * n * (context_tokens + (n + 1) / 2.0)


@dataclass(frozen=True)
class FlopsAttentionPredictor:
    """Time = overhead_s + (Σ attention FLOPs) / flops_per_s."""

    num_layers: int
    num_heads: int
    head_dim: int
    flops_per_s: float
    overhead_s: float = 0.0

    def __post_init__(self) -> None:
        if min(self.num_layers, self.num_heads, self.head_dim) <= 0:
            raise ConfigError("predictor: layers, heads and head_dim must be positive")
        if self.flops_per_s <= 0 or self.overhead_s < 0:
            raise ConfigError("predictor: flops_per_s must be > 0 and overhead_s >= 0")

    def flops(self, chunks: Sequence[Chunk]) -> float:
        return sum(attention_flops(c, n, self.num_layers, self.num_heads, self.head_dim)
                   for c, n in chunks)

    def predict_s(self, chunks: Sequence[Chunk]) -> float:
        return self.overhead_s + self.flops(chunks) / self.flops_per_s

    @classmethod
    def fit(cls, num_layers: int, num_heads: int, head_dim: int,
            samples: Sequence[tuple[Sequence[Chunk], float]]) -> FlopsAttentionPredictor:
        """Least-squares fit of t = overhead + F / flops_per_s on (batch chunks, seconds).

        If the best intercept is negative (noise at small batches) the line is refitted
        through the origin, so a prediction never undercuts the FLOPs term.
        """
        if not samples:
            raise ConfigError("predictor fit: no samples")
        probe = cls(num_layers, num_heads, head_dim, flops_per_s=1.0)
        xs = [probe.flops(chunks) for chunks, _ in samples]
        ys = [float(t) for _, t in samples]
        return cls(num_layers, num_heads, head_dim, *_least_squares(xs, ys))

    def __reduce__(self) -> tuple[object, ...]:
        return reduce_frozen(self)  # pickle/copy, also when compiled


def _least_squares(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """(flops_per_s, overhead_s) of the line y = b + x / flops_per_s."""
    n = len(xs)
    mean_x = sum(xs) / n
    mean_y = sum(ys) / n
    sxx = sum((x - mean_x) ** 2 for x in xs)
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True))
    slope = sxy / sxx if sxx > 0 else 0.0
    intercept = mean_y - slope * mean_x
    if intercept < 0 or slope <= 0:
        sq = sum(x * x for x in xs)
        slope = sum(x * y for x, y in zip(xs, ys, strict=True)) / sq if sq > 0 else 0.0
        intercept = 0.0
    if slope <= 0:
        raise ConfigError("predictor fit: samples show no time growth with FLOPs")
    return 1.0 / slope, intercept
