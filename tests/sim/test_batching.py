"""PE batch formation: FIFO under the attention quota, the overflowing request chunked."""

from __future__ import annotations

from dualpath.sim.batching import form_batch


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
