"""Prefill batch formation and the FLOPs-based attention-time predictor."""

from __future__ import annotations

import random

import pytest

from dualpath.core.errors import ConfigError, SchedulingError
from dualpath.scheduler import (
    FlopsAttentionPredictor,
    PrefillWork,
    attention_flops,
    form_prefill_batch,
)

P = FlopsAttentionPredictor(num_layers=2, num_heads=4, head_dim=8, flops_per_s=1e6,
                            overhead_s=0.001)


def test_flops_formula_matches_pairwise_count() -> None:
    for c, n in [(0, 1), (10, 4), (100, 37), (0, 64)]:
        pairs = sum(c + i + 1 for i in range(n))  # new token i sees c + i + 1 keys
        assert attention_flops(c, n, 2, 4, 8) == pytest.approx(4 * 2 * 4 * 8 * pairs)


def test_prediction_adds_flops_and_overhead() -> None:
    f = attention_flops(5, 3, 2, 4, 8) + attention_flops(0, 7, 2, 4, 8)
    assert P.predict_s([(5, 3), (0, 7)]) == pytest.approx(0.001 + f / 1e6)


def test_fit_recovers_a_linear_profile() -> None:
    rng = random.Random(1)
    truth = FlopsAttentionPredictor(30, 32, 80, flops_per_s=3e14, overhead_s=0.002)
    samples = []
    for _ in range(40):
        batch = [(rng.randrange(0, 60_000), rng.randrange(1, 4000)) for _ in range(3)]
        samples.append((batch, truth.predict_s(batch) * rng.uniform(0.98, 1.02)))
    fitted = FlopsAttentionPredictor.fit(30, 32, 80, samples)
    assert fitted.flops_per_s == pytest.approx(3e14, rel=0.05)
    assert fitted.overhead_s == pytest.approx(0.002, abs=0.002)


def test_fit_never_returns_a_negative_overhead() -> None:
    # times below the line through the origin at small sizes -> negative intercept -> refit.
    samples = [([(0, 10)], 0.0), ([(0, 100)], 1.0), ([(0, 200)], 4.0)]
    fitted = FlopsAttentionPredictor.fit(1, 1, 1, samples)
    assert fitted.overhead_s == 0.0
    assert fitted.flops_per_s > 0


def test_fit_rejects_useless_samples() -> None:
    with pytest.raises(ConfigError):
        FlopsAttentionPredictor.fit(1, 1, 1, [])
    with pytest.raises(ConfigError):
        FlopsAttentionPredictor.fit(1, 1, 1, [([(0, 10)], 0.0), ([(0, 100)], 0.0)])


def test_everything_fits() -> None:
    queue = [PrefillWork("a", 100, 10), PrefillWork("b", 0, 20)]
    plan = form_prefill_batch(queue, 10.0, P)
    assert [(i.request_id, i.context_tokens, i.chunk_tokens, i.last_chunk)
            for i in plan.items] == [("a", 100, 10, True), ("b", 0, 20, True)]
    assert plan.predicted_s == pytest.approx(P.predict_s([(100, 10), (0, 20)]))
    assert not plan.over_quota
    assert plan.num_tokens == 30


def test_overflowing_request_gets_the_largest_chunk_that_fits() -> None:
    queue = [PrefillWork("a", 1000, 50), PrefillWork("b", 2000, 500), PrefillWork("c", 0, 5)]
    quota = P.predict_s([(1000, 50), (2000, 200)]) + 1e-9
    plan = form_prefill_batch(queue, quota, P)
    assert [i.request_id for i in plan.items] == ["a", "b"]  # c waits: FIFO, batch ends at b
    k = plan.items[1].chunk_tokens
    assert k == 200 and not plan.items[1].last_chunk
    assert P.predict_s([(1000, 50), (2000, k)]) <= quota < P.predict_s([(1000, 50), (2000, k + 1)])


def test_chunks_align_to_blocks() -> None:
    queue = [PrefillWork("a", 0, 1000)]
    quota = P.predict_s([(0, 300)])
    plan = form_prefill_batch(queue, quota, P, align_tokens=64)
    assert plan.items[0].chunk_tokens == 256
    assert plan.predicted_s <= quota


def test_continuation_uses_earlier_chunks_as_context() -> None:
    plan = form_prefill_batch([PrefillWork("a", 100, 1000, already_prefilled_tokens=400)],
                              1000.0, P)
    assert (plan.items[0].context_tokens, plan.items[0].chunk_tokens) == (500, 600)
    assert plan.items[0].last_chunk


def test_progress_when_nothing_fits() -> None:
    plan = form_prefill_batch([PrefillWork("a", 0, 1000)], 0.0005, P, align_tokens=16)
    assert [(i.chunk_tokens, i.last_chunk) for i in plan.items] == [(16, False)]
    assert plan.over_quota
    # ...but a later request that does not fit just waits.
    plan = form_prefill_batch([PrefillWork("a", 0, 1), PrefillWork("b", 0, 10**6)],
                              P.predict_s([(0, 1)]), P)
    assert [i.request_id for i in plan.items] == ["a"] and not plan.over_quota


def test_empty_queue_and_bad_work() -> None:
    plan = form_prefill_batch([], 0.3, P)
    assert plan.items == () and plan.predicted_s == 0.0
    with pytest.raises(SchedulingError, match="nothing left"):
        PrefillWork("a", 10, 5, already_prefilled_tokens=5)
    with pytest.raises(SchedulingError):
        form_prefill_batch([], 0.0, P)
