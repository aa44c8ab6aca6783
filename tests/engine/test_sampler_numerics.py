"""The sampler never fails on a valid request, however extreme its parameters or the logits."""

from __future__ import annotations

import pytest
import torch

from dualpath.core.requests import SEED_MAX, SEED_MIN
from dualpath.engine.sampler import sample_token

LOGITS = torch.tensor([0.1, 3.0, 2.0, -1.0])


@pytest.mark.parametrize("top_p", [1e-300, 5e-324, 1e-45, 1e-8])
def test_tiny_top_p_keeps_the_most_likely_token(top_p: float) -> None:
    # 1e-300 is 0.0 in float32: a float32 comparison kept no token at all.
    for step in range(20):
        assert sample_token(LOGITS, temperature=1.0, top_p=top_p, seed=3, step=step) == 1


@pytest.mark.parametrize("temperature", [1e-300, 5e-324, 1e-6])
def test_tiny_temperature_is_greedy(temperature: float) -> None:
    assert sample_token(LOGITS, temperature=temperature, top_p=1.0, seed=3, step=0) == 1
    assert sample_token(LOGITS, temperature=temperature, top_p=0.5, seed=None, step=0) == 1


def test_small_but_sampling_temperature_does_not_overflow() -> None:
    big = torch.tensor([80.0, 79.0, -50.0]) * 1000  # / 1e-4 -> far beyond float32's range
    for step in range(10):
        assert sample_token(big, temperature=1e-4, top_p=1.0, seed=1, step=step) == 0


@pytest.mark.parametrize("bad", [
    [float("nan"), 1.0, 0.5],
    [float("nan")] * 3,
    [float("-inf")] * 3,
    [float("inf"), 1.0, float("inf")],
    [1e308, -1e308, 0.0],
])
def test_non_finite_logits_give_a_token_not_an_error(bad: list[float]) -> None:
    logits = torch.tensor(bad, dtype=torch.float32)
    for temperature, top_p in ((0.0, 1.0), (1.0, 1.0), (0.7, 1e-300), (2.0, 0.9)):
        tok = sample_token(logits, temperature=temperature, top_p=top_p, seed=5, step=0)
        assert 0 <= tok < len(bad)


def test_nan_logit_is_never_chosen_when_a_finite_one_exists() -> None:
    logits = torch.tensor([float("nan"), -3.0, float("nan")])
    for step in range(20):
        assert sample_token(logits, temperature=1.0, top_p=1.0, seed=2, step=step) == 1


def test_all_tokens_banned_or_out_of_range_bans() -> None:
    tok = sample_token(LOGITS, temperature=1.0, top_p=1.0, seed=1, step=0,
                       banned_token_ids=(0, 1, 2, 3, 99, -7))
    assert 0 <= tok < 4


@pytest.mark.parametrize("seed", [SEED_MIN, -1, 0, 2**63, SEED_MAX])
def test_every_64_bit_seed_is_reproducible(seed: int) -> None:
    logits = torch.randn(50, generator=torch.Generator().manual_seed(0))
    a = [sample_token(logits, temperature=1.0, top_p=0.9, seed=seed, step=s) for s in range(5)]
    b = [sample_token(logits, temperature=1.0, top_p=0.9, seed=seed, step=s) for s in range(5)]
    assert a == b
