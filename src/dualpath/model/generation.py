"""A single-sequence generation loop on top of `Transformer.prefill` / `decode`.

Used by `dualpath generate` and by tests; the engines run their own batched loops. Sampling is
greedy at temperature 0, otherwise temperature + top-p with the caller's seeded generator.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from dualpath.core.errors import UserInputError
from dualpath.model.kv_sequence import DenseKV
from dualpath.model.transformer import Past, Transformer


def sample(logits: torch.Tensor, temperature: float = 0.0, top_p: float = 1.0,
           generator: torch.Generator | None = None) -> int:
    """One token id from logits `[V]`: argmax at temperature 0, else top-p sampling."""
    if temperature <= 0.0:
        return int(torch.argmax(logits).item())
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_p, dim=-1) - sorted_p < top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
    return int(torch.multinomial(probs, 1, generator=generator).item())


@dataclass
class Generation:
    """Result of `generate`.

    token_ids: generated ids (the stop token included if one ended it).
    kv: KV of prompt + generated tokens except the last generated one (never fed back).
    last_logits: float32 logits `[V]` that chose each generated token, in order.
    finish_reason: "stop" or "length".
    """

    token_ids: list[int]
    kv: DenseKV
    logits: list[torch.Tensor]
    finish_reason: str


def generate(
    model: Transformer,
    prompt_ids: Sequence[int],
    *,
    max_tokens: int,
    eos_token_ids: Sequence[int] = (),
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    past: Past = None,
    past_tokens: int = 0,
    on_token: Callable[[int], None] | None = None,
) -> Generation:
    """Generate up to `max_tokens` after `prompt_ids`.

    If `past` is given it holds the KV of `prompt_ids[:past_tokens]` (a list of per-layer
    tensors or a layer source) and only the rest of the prompt is prefilled.
    """
    if max_tokens < 1:
        raise UserInputError(f"max_tokens must be >= 1, got {max_tokens}")
    if not 0 <= past_tokens < len(prompt_ids):
        raise UserInputError(
            f"past_tokens must leave at least one prompt token to compute "
            f"({past_tokens} of {len(prompt_ids)})"
        )
    limit = model.config.max_position_embeddings
    if len(prompt_ids) + max_tokens > limit:
        raise UserInputError(
            f"prompt ({len(prompt_ids)} tokens) + max_tokens ({max_tokens}) exceeds the "
            f"model's {limit} positions"
        )
    gen = torch.Generator().manual_seed(seed)
    captured: dict[int, torch.Tensor] = {}

    def source(layer: int) -> torch.Tensor:
        # called once per layer by prefill; keep the prefix to seed the decode cache
        prefix = past(layer) if callable(past) else past[layer]  # type: ignore[index]
        captured[layer] = prefix
        return prefix

    out = model.prefill(prompt_ids[past_tokens:], start_pos=past_tokens,
                        past=source if past_tokens else None)
    layers = [
        torch.cat((captured[i].to(new.dtype), new)) if past_tokens else new
        for i, new in enumerate(out.new_kv)
    ]
    kv = DenseKV.from_layers(model.config, layers)
    if out.logits is None:
        raise RuntimeError("prefill returned no logits")
    logits = out.logits
    tokens: list[int] = []
    all_logits: list[torch.Tensor] = []
    stop = set(eos_token_ids)
    while True:
        token = sample(logits, temperature, top_p, gen)
        tokens.append(token)
        all_logits.append(logits)
        if on_token is not None:
            on_token(token)
        if token in stop:
            return Generation(tokens, kv, all_logits, "stop")
        if len(tokens) >= max_tokens:
            return Generation(tokens, kv, all_logits, "length")
        logits = model.decode([token], [kv])[0]
