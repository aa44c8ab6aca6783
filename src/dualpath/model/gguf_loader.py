"""Loading a llama.cpp GGUF checkpoint (Llama / Qwen2 architectures) into a `Transformer`.

Quantized tensors (Q4_x, Q8_0, F16, ...) are dequantized with `gguf.quants.dequantize` to
float32 and then cast to the requested dtype, one tensor at a time; for quantized execution
Q4_0 / Q4_1 / Q8_0 tensors can instead be handed over in block form (`gguf_blocks`).
llama.cpp's converter permutes the rows of Llama q/k projections to suit its own RoPE
kernel; `_unpermute` undoes that so the HF rotate-half RoPE used here is correct (Qwen2 GGUFs
are not permuted). The config and tokenizer come from `gguf_config` (torch-free).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from dualpath.core.errors import ModelLoadError
from dualpath.core.model_config import ModelConfig
from dualpath.model.gguf_blocks import KEPT_TYPES, from_gguf_data
from dualpath.model.gguf_config import (  # noqa: F401 (SUPPORTED_ARCHS: re-exported)
    SUPPORTED_ARCHS,
    config_from_gguf,
    gguf_config_and_tokenizer,
)
from dualpath.model.gguf_file import GGUFFile
from dualpath.model.quant import WeightValue, as_float
from dualpath.model.tokenizer import BPETokenizer

_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GLOBAL_NAMES = {
    "token_embd.weight": "embed_tokens.weight",
    "output_norm.weight": "norm.weight",
    "output.weight": "lm_head.weight",
}


def _unpermute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Inverse of llama.cpp convert's `permute` (rows grouped per head as [2, D/2] -> [D/2, 2])."""
    rows = w.shape[0]
    return (w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def hf_name(gguf_name: str) -> str | None:
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    m = re.fullmatch(r"blk\.(\d+)\.(.+)", gguf_name)
    if m and m.group(2) in _LAYER_NAMES:
        return f"layers.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}"
    return None


def read_gguf(path: Path, kv_dtype: str, *, keep_quantized: bool = False
              ) -> tuple[ModelConfig, Iterator[tuple[str, WeightValue]], BPETokenizer]:
    """Config, a one-pass iterator of HF-named tensors, and the tokenizer of a GGUF file.

    Tensors come one at a time, so a caller that converts each as it arrives never holds
    the whole model in float32. With `keep_quantized`, Q4_0 / Q4_1 / Q8_0 tensors come as
    `BlockQuantized` (rows already un-permuted), everything else as float32 tensors.
    """
    reader = GGUFFile(path)
    fields = reader.fields
    config = config_from_gguf(path, fields, {t.name for t in reader.tensors}, kv_dtype)
    return config, _tensors(path, reader, config, keep_quantized), \
        BPETokenizer.from_gguf_fields(fields)


def _tensors(path: Path, reader: GGUFFile, config: ModelConfig, keep_quantized: bool
             ) -> Iterator[tuple[str, WeightValue]]:
    from gguf.constants import GGMLQuantizationType
    from gguf.quants import dequantize

    permuted = dict(config.extra).get("architecture") == "llama"
    for t in reader.tensors:
        name = hf_name(t.name)
        if name is None:
            raise ModelLoadError(f"{path}: unexpected tensor {t.name!r}")
        shape = tuple(int(d) for d in reversed(list(t.shape)))
        heads = (config.num_heads if name.endswith("q_proj.weight") else
                 config.num_kv_heads if name.endswith("k_proj.weight") else 0)
        if keep_quantized and int(t.tensor_type) in KEPT_TYPES and len(shape) == 2:
            blocks = from_gguf_data(t.data, int(t.tensor_type), (shape[0], shape[1]))
            if permuted and heads:
                blocks = blocks.permute_rows(functools.partial(_unpermute, n_heads=heads))
            yield name, blocks
            continue
        arr = np.asarray(dequantize(t.data, GGMLQuantizationType(t.tensor_type)), dtype=np.float32).reshape(shape)
        if permuted and heads:
            arr = _unpermute(arr, heads)
        yield name, torch.from_numpy(np.array(arr, order="C", copy=True))


def load_gguf(path: Path, kv_dtype: str) -> tuple[ModelConfig, dict[str, torch.Tensor], BPETokenizer]:
    """Config, HF-named float32 tensors (all at once) and tokenizer of a GGUF file."""
    config, tensors, tokenizer = read_gguf(path, kv_dtype)
    return config, {name: as_float(value) for name, value in tensors}, tokenizer
