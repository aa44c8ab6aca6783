"""How a model runs: the names of the dtypes and weight quantizations, and their effect on the
config. Torch-free, so processes that never run the model (the scheduler) can use it.

- dtype: "float32" (the exact reference), "bfloat16" (or "float16"): the activations' and the
  KV's dtype, and the weights' when they are not quantized.
- quantization: "none" (float weights in `dtype`), "int8" or "int4" (weight-only, see
  `quant.py` and docs/decisions/cpu-weight-quantization.md).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

from dualpath.core.errors import UserInputError
from dualpath.core.model_config import KV_DTYPE_BYTES, ModelConfig

Quantization = Literal["none", "int8", "int4"]
QUANTIZATIONS: tuple[str, ...] = ("none", "int8", "int4")
DTYPES: tuple[str, ...] = tuple(KV_DTYPE_BYTES)


def check_dtype(name: str) -> str:
    if name not in KV_DTYPE_BYTES:
        raise UserInputError(f"unknown dtype {name!r}; choose one of {sorted(KV_DTYPE_BYTES)}")
    return name


def check_quantization(name: str) -> Quantization:
    if name not in QUANTIZATIONS:
        raise UserInputError(f"unknown quantization {name!r}; choose one of {QUANTIZATIONS}")
    return name  # type: ignore[return-value]


def with_quantization(config: ModelConfig, mode: Quantization) -> ModelConfig:
    """The config of `config`'s model run in `mode`: quantized weights make different KV, so
    the weights id (and with it `identity`, which every block hash mixes in) says so."""
    return config if mode == "none" else replace(config, weights_id=f"{config.weights_id}+{mode}")
