"""The architecture description of a Llama/Qwen2-family decoder, shared by model/ and kv/.

`ModelConfig` is frozen and carries only architecture facts; derived sizes are properties.
`identity` names a model *and its weights*, and is mixed into every block hash so that two
models (or two random-weight seeds of one preset) never share KV blocks.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

from dualpath.core.errors import ConfigError

# Bytes per element of each KV dtype we support (names as torch spells them).
KV_DTYPE_BYTES: dict[str, int] = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a decoder-only transformer (Llama / Qwen2 / SmolLM2 family).

    `weights_id` distinguishes checkpoints of one architecture: a file digest for real
    checkpoints, "random-seed-N" for random presets.
    """

    name: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_position_embeddings: int = 8192
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    # rope_scaling as (key, value) pairs so the dataclass stays hashable; None = no scaling.
    rope_scaling: tuple[tuple[str, float | str], ...] | None = None
    tie_word_embeddings: bool = True
    attention_bias: bool = False  # Qwen2 has q/k/v biases
    kv_dtype: str = "float32"
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    weights_id: str = "unknown"
    extra: tuple[tuple[str, str], ...] = field(default=())

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers",
                     "num_heads", "num_kv_heads", "head_dim"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"model config {self.name!r}: {name} must be positive")
        if self.num_heads % self.num_kv_heads != 0:
            raise ConfigError(
                f"model config {self.name!r}: num_heads ({self.num_heads}) must be a multiple "
                f"of num_kv_heads ({self.num_kv_heads})"
            )
        if self.kv_dtype not in KV_DTYPE_BYTES:
            raise ConfigError(
                f"model config {self.name!r}: kv_dtype {self.kv_dtype!r} not one of "
                f"{sorted(KV_DTYPE_BYTES)}"
            )

    @property
    def kv_dtype_bytes(self) -> int:
        return KV_DTYPE_BYTES[self.kv_dtype]

    @property
    def kv_bytes_per_token_per_layer(self) -> int:
        """K and V of one token in one layer: 2 x kv_heads x head_dim x dtype bytes."""
        return 2 * self.num_kv_heads * self.head_dim * self.kv_dtype_bytes

    @property
    def kv_bytes_per_token(self) -> int:
        return self.num_layers * self.kv_bytes_per_token_per_layer

    @property
    def identity(self) -> str:
        """Stable digest of architecture + weights + KV dtype (hex, 16 chars).

        Stable across processes and machines: built from a canonical JSON dump, never from
        Python's salted `hash()`.
        """
        blob = json.dumps(asdict(self), sort_keys=True, default=str).encode()
        return hashlib.blake2b(blob, digest_size=8).hexdigest()
