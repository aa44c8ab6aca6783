"""Token sampling, reproducible across engines.

The prefill engine samples a request's first token and a decode engine samples the rest, so a
seeded request must not depend on which process samples which step: the random draw of step
k is a pure function of (seed, k). Greedy (temperature 0) needs no randomness at all.
"""

from __future__ import annotations

import hashlib

import torch


def _step_generator(seed: int, step: int) -> torch.Generator:
    digest = hashlib.blake2b(f"{seed}:{step}".encode(), digest_size=8).digest()
    gen = torch.Generator()
    gen.manual_seed(int.from_bytes(digest, "little") & ((1 << 63) - 1))
    return gen


def sample_token(
    logits: torch.Tensor,
    *,
    temperature: float,
    top_p: float,
    seed: int | None,
    step: int,
    banned_token_ids: tuple[int, ...] = (),
) -> int:
    """Sample one token id from `logits` [vocab] (fp32).

    banned_token_ids get -inf before sampling (used for EOS while min_tokens is not reached).
    Unseeded sampling uses torch's global generator, i.e. is not reproducible.
    """
    logits = logits.float()
    if banned_token_ids:
        logits = logits.clone()
        logits[list(banned_token_ids)] = float("-inf")
    if temperature <= 0.0:
        return int(torch.argmax(logits).item())
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, sorted_idx = torch.sort(probs, descending=True)
        cumulative = torch.cumsum(sorted_probs, dim=-1)
        # Keep the smallest prefix whose mass reaches top_p (always at least one token).
        keep = cumulative - sorted_probs < top_p
        sorted_probs = torch.where(keep, sorted_probs, torch.zeros_like(sorted_probs))
        probs = torch.zeros_like(probs).scatter_(0, sorted_idx, sorted_probs)
    generator = _step_generator(seed, step) if seed is not None else None
    return int(torch.multinomial(probs, 1, generator=generator).item())
