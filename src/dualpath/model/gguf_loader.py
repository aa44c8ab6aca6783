"""Loading a llama.cpp GGUF checkpoint (Llama / Qwen2 architectures) into a `Transformer`.

Quantized tensors (Q4_x, Q8_0, F16, ...) are dequantized with `gguf.quants.dequantize` to
float32 and then cast to the requested dtype. llama.cpp's converter permutes the rows of Llama
q/k projections to suit its own RoPE kernel; `_unpermute` undoes that so the HF rotate-half
RoPE used here is correct (Qwen2 GGUFs are not permuted).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dualpath.core.errors import ModelLoadError
from dualpath.core.model_config import ModelConfig
from dualpath.model.digest import file_digest
from dualpath.model.tokenizer import BPETokenizer

SUPPORTED_ARCHS = ("llama", "qwen2")

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


def _reader(path: Path) -> Any:
    from gguf import GGUFReader

    try:
        return GGUFReader(str(path))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read GGUF file {path}: {exc}") from exc


def read_fields(reader: Any) -> dict[str, Any]:
    return {name: field.contents() for name, field in reader.fields.items()}


def config_from_gguf(path: Path, fields: dict[str, Any], tensor_names: set[str],
                     kv_dtype: str) -> ModelConfig:
    arch = fields.get("general.architecture")
    if arch not in SUPPORTED_ARCHS:
        raise ModelLoadError(f"{path}: architecture {arch!r} not supported ({SUPPORTED_ARCHS})")
    if "rope_freqs.weight" in tensor_names:
        raise ModelLoadError(f"{path}: per-frequency rope factors (rope_freqs) are not supported")

    def f(key: str, default: Any = None) -> Any:
        value = fields.get(f"{arch}.{key}", default)
        if value is None:
            raise ModelLoadError(f"{path}: GGUF metadata lacks {arch}.{key}")
        return value

    hidden = int(f("embedding_length"))
    heads = int(f("attention.head_count"))
    scaling: tuple[tuple[str, float | str], ...] | None = None
    scaling_type = fields.get(f"{arch}.rope.scaling.type")
    if scaling_type not in (None, "none"):
        if scaling_type != "linear":
            raise ModelLoadError(f"{path}: rope scaling {scaling_type!r} not supported")
        scaling = (("factor", float(f("rope.scaling.factor"))), ("rope_type", "linear"))
    eos = fields.get("tokenizer.ggml.eos_token_id")
    bos = fields.get("tokenizer.ggml.bos_token_id")
    return ModelConfig(
        name=str(fields.get("general.name") or path.stem),
        vocab_size=int(fields.get(f"{arch}.vocab_size") or len(fields["tokenizer.ggml.tokens"])),
        hidden_size=hidden,
        intermediate_size=int(f("feed_forward_length")),
        num_layers=int(f("block_count")),
        num_heads=heads,
        num_kv_heads=int(f("attention.head_count_kv", heads)),
        head_dim=int(f("attention.key_length", hidden // heads)),
        max_position_embeddings=int(f("context_length", 4096)),
        rms_norm_eps=float(f("attention.layer_norm_rms_epsilon", 1e-6)),
        rope_theta=float(f("rope.freq_base", 10000.0)),
        rope_scaling=scaling,
        tie_word_embeddings="output.weight" not in tensor_names,
        attention_bias="blk.0.attn_q.bias" in tensor_names,
        kv_dtype=kv_dtype,
        bos_token_id=None if bos is None else int(bos),
        eos_token_ids=() if eos is None else (int(eos),),
        weights_id=file_digest([path], "gguf"),
        extra=(("source", "gguf"), ("architecture", str(arch))),
    )


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


def load_gguf(path: Path, kv_dtype: str) -> tuple[ModelConfig, dict[str, torch.Tensor], BPETokenizer]:
    """Config, HF-named float tensors and tokenizer of a GGUF file."""
    from gguf.quants import dequantize

    reader = _reader(path)
    fields = read_fields(reader)
    names = {t.name for t in reader.tensors}
    config = config_from_gguf(path, fields, names, kv_dtype)
    permuted = fields.get("general.architecture") == "llama"
    tensors: dict[str, torch.Tensor] = {}
    for t in reader.tensors:
        name = hf_name(t.name)
        if name is None:
            raise ModelLoadError(f"{path}: unexpected tensor {t.name!r}")
        shape = tuple(int(d) for d in reversed(list(t.shape)))
        arr = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(shape)
        if permuted and name.endswith("q_proj.weight"):
            arr = _unpermute(arr, config.num_heads)
        elif permuted and name.endswith("k_proj.weight"):
            arr = _unpermute(arr, config.num_kv_heads)
        tensors[name] = torch.from_numpy(np.array(arr, order="C", copy=True))
    tokenizer = BPETokenizer.from_gguf_fields(fields)
    return config, tensors, tokenizer
