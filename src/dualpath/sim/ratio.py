"""The cache-compute ratio (DESIGN.md section 1): GB of KV to load per PFLOP of prefill.

A turn appends `append_tokens` to a context of `context_tokens` whose KV is all cached:
ratio = KV bytes of the context / FLOPs to prefill the append (linear + attention).
"""

from __future__ import annotations

from dualpath.sim.model_cost import ModelCost

# DESIGN.md section 1 (the paper's table), GB/PFLOP at 16K and 64K context.
PAPER_RATIOS: dict[str, tuple[float, float]] = {
    "qwen-32b": (117.0, 267.0),
    "ds-660b": (13.0, 36.0),
}
APPEND_TOKENS = 429


def cache_compute_gb_per_pflop(model: ModelCost, context_tokens: int, append_tokens: int = APPEND_TOKENS) -> float:
    kv_gb = context_tokens * model.kv_bytes_per_token / 1e9
    pflop = model.prefill_flops(context_tokens, append_tokens) / 1e15
    return kv_gb / pflop
