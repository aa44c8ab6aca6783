"""Random-weight model presets: tiny architectures for tests and benchmarks (no files needed).

`weights_id` is "random-seed-N", so two seeds of one preset never share KV blocks in a store.
"""

from __future__ import annotations

from dataclasses import replace

from dualpath.core.model_config import ModelConfig
from dualpath.model.tokenizer import ByteTokenizer

_BASE = ModelConfig(
    name="tiny", vocab_size=320, hidden_size=64, intermediate_size=128, num_layers=3,
    num_heads=4, num_kv_heads=2, head_dim=16, max_position_embeddings=8192,
    rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True,
)

PRESETS: dict[str, ModelConfig] = {
    # grouped-query attention, tied embeddings (the SmolLM2 shape, scaled down)
    "tiny": _BASE,
    # multi-head attention, two layers
    "tiny-mha": replace(_BASE, name="tiny-mha", num_layers=2, num_kv_heads=4),
    # Qwen2 traits: q/k/v biases, untied embeddings, large rope theta
    "tiny-qwen2": replace(_BASE, name="tiny-qwen2", attention_bias=True,
                          tie_word_embeddings=False, rope_theta=1_000_000.0),
    # Llama 3.1 frequency-band rope scaling
    "tiny-llama3": replace(_BASE, name="tiny-llama3", rope_theta=500_000.0, rope_scaling=(
        ("factor", 8.0), ("high_freq_factor", 4.0), ("low_freq_factor", 1.0),
        ("original_max_position_embeddings", 256), ("rope_type", "llama3"))),
    # a few times larger, for benchmarks where tiny is all overhead
    "small": replace(_BASE, name="small", hidden_size=256, intermediate_size=768, num_layers=6,
                     num_heads=8, num_kv_heads=2, head_dim=32),
}


def preset_config(name: str, *, seed: int, kv_dtype: str = "float32") -> ModelConfig:
    """The config of preset `name` with this seed's weights id (KeyError if unknown)."""
    tok = ByteTokenizer(PRESETS[name].vocab_size)
    return replace(PRESETS[name], kv_dtype=kv_dtype, weights_id=f"random-seed-{seed}",
                   eos_token_ids=tok.eos_token_ids)
