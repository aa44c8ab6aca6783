"""Rotary position embeddings (HF "rotate_half" layout) with the checkpoint's theta and scaling.

Supported `rope_scaling` types: none / "default", "linear" (positions divided by `factor`) and
"llama3" (Llama 3.1 frequency-band scaling); anything else is a ModelLoadError at load time,
because silently ignoring a scaling would produce wrong KV that then gets persisted.
"""

from __future__ import annotations

import math

import torch

from dualpath.core.errors import ModelLoadError
from dualpath.core.model_config import ModelConfig

SUPPORTED_SCALING: tuple[str, ...] = ("default", "linear", "llama3")


def scaling_dict(config: ModelConfig) -> dict[str, float | str]:
    return dict(config.rope_scaling) if config.rope_scaling else {}


def inverse_frequencies(config: ModelConfig) -> torch.Tensor:
    """Per-pair inverse frequencies `[head_dim // 2]` (float32), scaling applied."""
    dim = config.head_dim
    inv_freq = 1.0 / (
        config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).to(torch.float32) / dim)
    )
    scaling = scaling_dict(config)
    kind = str(scaling.get("rope_type", scaling.get("type", "default")))
    if kind == "default":
        return inv_freq
    if kind == "linear":
        return inv_freq / float(scaling["factor"])
    if kind == "llama3":
        factor = float(scaling["factor"])
        low = float(scaling["low_freq_factor"])
        high = float(scaling["high_freq_factor"])
        old_len = float(scaling["original_max_position_embeddings"])
        low_wavelen = old_len / low
        high_wavelen = old_len / high
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
        return torch.where(medium, smoothed, scaled)
    raise ModelLoadError(
        f"model {config.name!r}: rope scaling {kind!r} is not supported "
        f"(supported: {', '.join(SUPPORTED_SCALING)})"
    )


class RotaryEmbedding:
    """cos/sin tables for absolute positions; grows on demand, computed in float32."""

    def __init__(self, config: ModelConfig) -> None:
        self.inv_freq = inverse_frequencies(config)
        self._cos = torch.empty(0, config.head_dim)
        self._sin = torch.empty(0, config.head_dim)

    def _grow(self, length: int) -> None:
        size = max(length, 2 * self._cos.shape[0], 256)
        pos = torch.arange(size, dtype=torch.float32)
        freqs = torch.outer(pos, self.inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        self._cos, self._sin = emb.cos(), emb.sin()

    def cos_sin(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin `[N, head_dim]` for a 1-D tensor of absolute positions."""
        needed = int(positions.max().item()) + 1 if positions.numel() else 0
        if needed > self._cos.shape[0]:
            self._grow(needed)
        return self._cos[positions], self._sin[positions]


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate `x` `[N, heads, head_dim]` by per-token cos/sin `[N, head_dim]` (math in float32)."""
    xf = x.float()
    c = cos[:, None, :]
    s = sin[:, None, :]
    return (xf * c + _rotate_half(xf) * s).to(x.dtype)
