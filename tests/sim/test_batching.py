"""PE batch formation: FIFO under the attention quota, the overflowing request chunked."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from dualpath.sim.batching import CostAttentionPredictor, form_batch


def linear(ctx: int, new: int) -> float:
    return new * 0.001  # 1 ms of attention per new token, whatever the context


def test_whole_requests_fit_then_the_next_is_chunked_in_blocks() -> None:
    # quota 300 ms: 100 + 100 fit, the third (200 tokens) gets the largest whole-block chunk
    # that keeps the sum <= 300 ms: 64 tokens (128 would be 328 ms).
    assert form_batch([(0, 100, 0), (0, 100, 0), (0, 200, 0)], 0.3, linear) == [100, 100, 64]


def test_a_huge_first_request_still_makes_progress() -> None:
    assert form_batch([(0, 10_000, 0)], 0.3, linear) == [256]
    assert form_batch([(0, 30, 0)], 0.001, linear) == [30]


def test_hbm_limit_bounds_the_prefixes_in_a_batch() -> None:
    q = [(5000, 10, 5000), (5000, 10, 5000), (5000, 10, 5000)]
    assert form_batch(q, 10.0, linear, kv_limit_tokens=10_100) == [10, 10]
    # The first request always goes in, even alone over the limit.
    assert form_batch(q, 10.0, linear, kv_limit_tokens=1) == [10]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.tuples(st.integers(0, 5000), st.integers(1, 600)), max_size=8),
                min_size=1, max_size=12))
def test_cost_predictor_cache_gives_the_plain_sum(calls: list[list[tuple[int, int]]]) -> None:
    """The prefix cache of `CostAttentionPredictor` never changes an answer, whatever the
    order of the calls (exact: the sums are taken in the same order)."""

    def t(c: int, n: int) -> float:
        return c * 1.3e-6 + n * n * 2.1e-7 + 1e-4

    pred = CostAttentionPredictor(t)
    for chunks in calls:
        assert pred.predict_s(chunks) == sum(t(c, n) for c, n in chunks)
        # batch formation's own pattern: the same list grown by one candidate
        grown = [*chunks, (17, 3)]
        assert pred.predict_s(grown) == sum(t(c, n) for c, n in grown)
