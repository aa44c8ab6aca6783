"""Prefill wall time when part of the prompt's KV is supplied from outside (the store's payoff).

For each model, prompt length and loaded fraction f, the first round(f x length) tokens (cut
to whole blocks of `block_size`, and always leaving at least one token to compute) arrive as
external KV and only the rest is prefilled. The prefix KV is random bytes of the right shape
pushed through `kv_from_bytes` layer by layer, exactly as a store-backed layer source would
deliver it: attention and matmul cost do not depend on the values, and this keeps an
8k-token prefix from costing an 8k-token prefill just to set up. `dualpath bench store`
calls `prefill_times`.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dualpath.core.model_config import ModelConfig

log = logging.getLogger(__name__)


def prefill_times(
    model_specs: Sequence[str],
    prompt_lengths: Sequence[int] = (512, 2048, 8192),
    loaded_fractions: Sequence[float] = (0.0, 0.9, 0.99),
    *,
    block_size: int = 64,
    repeats: int = 1,
    seed: int = 0,
    dtype: str = "float32",
    max_prompt_tokens: int | None = None,
    threads: int | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """One row per (model, prompt length, loaded fraction); times are the median of `repeats`.

    Prompt lengths are capped at the model's max positions (and at `max_prompt_tokens`);
    duplicates after capping are measured once. `threads` sets torch's intra-op threads for
    the run (on a shared, busy machine 1 thread gives far steadier times than OpenMP spinning).
    """
    import torch

    from dualpath.core.errors import UserInputError

    if repeats < 1:
        raise UserInputError(f"repeats must be >= 1, got {repeats}")
    for f in loaded_fractions:
        if not 0.0 <= f < 1.0:
            raise UserInputError(f"loaded fractions must be in [0, 1), got {f}")
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _measure(model_specs, prompt_lengths, loaded_fractions, block_size, repeats,
                        seed, dtype, max_prompt_tokens, progress)
    finally:
        torch.set_num_threads(previous_threads)


def _measure(model_specs: Sequence[str], prompt_lengths: Sequence[int],
             loaded_fractions: Sequence[float], block_size: int, repeats: int, seed: int,
             dtype: str, max_prompt_tokens: int | None, progress: bool) -> list[dict[str, Any]]:
    import numpy as np
    import torch

    from dualpath.model.kv_bytes import kv_from_bytes, kv_to_bytes
    from dualpath.model.loader import load_model

    rows: list[dict[str, Any]] = []
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(model_specs) * len(prompt_lengths) * len(loaded_fractions),
                   desc="prefill", unit="run")
    for spec in model_specs:
        model, _ = load_model(spec, dtype=dtype, seed=seed)
        cfg = model.config
        cap = cfg.max_position_embeddings
        if max_prompt_tokens is not None:
            cap = min(cap, max_prompt_tokens)
        lengths = sorted({min(n, cap) for n in prompt_lengths})
        model.prefill(list(range(8)))  # warm-up: first-call allocations are not prefill cost
        for length in lengths:
            tokens = rng.integers(0, cfg.vocab_size, size=length).tolist()
            for fraction in loaded_fractions:
                loaded = min(round(fraction * length) // block_size * block_size,
                             (length - 1) // block_size * block_size)
                shape = (loaded, 2, cfg.num_kv_heads, cfg.head_dim)
                raw = [kv_to_bytes(torch.randn(shape, generator=gen).to(model.dtype))
                       for _ in range(cfg.num_layers)]

                def source(layer: int, raw: list[Any] = raw, cfg: ModelConfig = cfg
                           ) -> torch.Tensor:
                    return kv_from_bytes(raw[layer], cfg)

                times: list[float] = []
                for _ in range(repeats):
                    start = time.perf_counter()
                    model.prefill(tokens[loaded:], start_pos=loaded,
                                  past=source if loaded else None)
                    times.append(time.perf_counter() - start)
                rows.append({
                    "model": spec,
                    "weights_id": cfg.weights_id,
                    "prompt_tokens": length,
                    "loaded_fraction": fraction,
                    "loaded_tokens": loaded,
                    "computed_tokens": length - loaded,
                    "loaded_kv_bytes": loaded * cfg.kv_bytes_per_token,
                    "prefill_s": statistics.median(times),
                    "torch_threads": torch.get_num_threads(),
                })
                log.info("prefill %s", rows[-1])
                if bar is not None:
                    bar.update(1)
        if bar is not None:
            bar.total -= (len(prompt_lengths) - len(lengths)) * len(loaded_fractions)
            bar.refresh()
    if bar is not None:
        bar.close()
    return rows
