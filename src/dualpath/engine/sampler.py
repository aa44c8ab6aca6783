"""Token sampling, reproducible across engines, and numerically safe for any valid parameter.

The prefill engine samples a request's first token and a decode engine samples the rest, so a
seeded request must not depend on which process samples which step: the random draw of step
k is a pure function of (seed, k). Greedy (temperature 0) needs no randomness at all.

Numerical safety (a valid request must never fail in here): temperatures below
`MIN_TEMPERATURE` are greedy (dividing by 1e-300 overflows every logit to inf, and vLLM treats
tiny temperatures the same way); scaling and top-p run in float64 on log-probabilities, so a
top_p of 1e-300 (which is 0 in float32) still keeps the most likely token; non-finite logits
(NaN from a broken model, +inf) never reach `torch.multinomial`; and a distribution with no
mass left falls back to the best finite logit instead of raising "invalid multinomial
distribution".
"""

from __future__ import annotations

import hashlib

import torch

# Below this the softmax is one-hot in float64 for any realistic logit gap; sampling would
# only add the risk of overflow.
MIN_TEMPERATURE = 1e-5


def _step_generator(seed: int, step: int) -> torch.Generator:
    digest = hashlib.blake2b(f"{seed}:{step}".encode(), digest_size=8).digest()
    gen = torch.Generator()
    gen.manual_seed(int.from_bytes(digest, "little") & ((1 << 63) - 1))
    return gen


def _argmax_finite(logits: torch.Tensor) -> int:
    """The best finite logit (+inf counts as best); token 0 when nothing is usable."""
    usable = torch.nan_to_num(logits, nan=float("-inf"), posinf=torch.finfo(logits.dtype).max)
    if not bool(torch.isfinite(usable).any()):
        return 0
    return int(torch.argmax(usable).item())


def sample_token(
    logits: torch.Tensor,
    *,
    temperature: float,
    top_p: float,
    seed: int | None,
    step: int,
    banned_token_ids: tuple[int, ...] = (),
) -> int:
    """Sample one token id from `logits` [vocab].

    banned_token_ids get -inf before sampling (used for EOS while min_tokens is not reached).
    Unseeded sampling uses torch's global generator, i.e. is not reproducible.
    """
    logits = logits.detach().to(torch.float64).flatten()
    if banned_token_ids:
        logits = logits.clone()
        valid = [t for t in banned_token_ids if 0 <= t < logits.numel()]
        logits[valid] = float("-inf")
    if not temperature > MIN_TEMPERATURE:  # also catches NaN
        return _argmax_finite(logits)
    if bool(torch.isposinf(logits).any()):  # infinite preference: greedy among those
        return _argmax_finite(logits)
    logits = torch.nan_to_num(logits, nan=float("-inf"))
    if not bool(torch.isfinite(logits).any()):
        return 0
    logprobs = torch.log_softmax(logits / temperature, dim=-1)
    probs = torch.exp(logprobs)
    if top_p < 1.0:
        sorted_probs, sorted_idx = torch.sort(probs, descending=True)
        cumulative = torch.cumsum(sorted_probs, dim=-1)
        # Keep the smallest prefix whose mass reaches top_p; the most likely token always.
        keep = (cumulative - sorted_probs) < top_p
        keep[0] = True
        sorted_probs = torch.where(keep, sorted_probs, torch.zeros_like(sorted_probs))
        probs = torch.zeros_like(probs).scatter_(0, sorted_idx, sorted_probs)
    total = float(probs.sum().item())
    if not (total > 0.0 and total == total and total != float("inf")):
        return _argmax_finite(logits)
    generator = _step_generator(seed, step) if seed is not None else None
    return int(torch.multinomial(probs, 1, generator=generator).item())
