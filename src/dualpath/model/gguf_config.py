"""The config and tokenizer of a llama.cpp GGUF checkpoint, read from its metadata alone.

Torch-free: the tensors' bytes are memory-mapped by `gguf_file.GGUFFile` and never touched,
so a process that only needs the config and tokenizer (the scheduler) stays small.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dualpath.core.errors import ModelLoadError
from dualpath.core.model_config import ModelConfig
from dualpath.model.digest import file_digest
from dualpath.model.gguf_file import GGUFFile
from dualpath.model.tokenizer import BPETokenizer

SUPPORTED_ARCHS = ("llama", "qwen2")


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


def gguf_config_and_tokenizer(path: Path, kv_dtype: str) -> tuple[ModelConfig, BPETokenizer]:
    """Config and tokenizer only: the tensors' bytes are never read (memory-mapped, untouched)."""
    reader = GGUFFile(path)  # a ModelLoadError for an unreadable or malformed file
    fields = reader.fields
    config = config_from_gguf(path, fields, {t.name for t in reader.tensors}, kv_dtype)
    return config, BPETokenizer.from_gguf_fields(fields)
