"""Shared fixtures for model tests: small random models (no files needed), and a writer of
llama.cpp-style GGUF files made from them (block-quantized like real checkpoints)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dualpath.model.loader import load_model
from dualpath.model.tokenizer import Tokenizer
from dualpath.model.transformer import Transformer

# Tiny models gain nothing from threads, and on a shared 2-core machine OpenMP spinning makes
# them 10x slower.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny() -> tuple[Transformer, Tokenizer]:
    return load_model("tiny", seed=1)


def _permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp convert's q/k row permutation (what `gguf_loader._unpermute` undoes)."""
    rows = w.shape[0]
    return (w.reshape(n_heads, 2, rows // n_heads // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def write_llama_gguf(path: Path, model: Transformer, linear_type: str = "Q4_1",
                     embed_type: str = "Q8_0") -> Path:
    """A llama-architecture GGUF of `model`'s float weights, with linear layers stored as
    `linear_type` and the (tied) embedding as `embed_type` (GGML type names), as llama.cpp's
    converter lays them out (q/k rows permuted); a byte-level token list for the tokenizer."""
    from gguf import GGMLQuantizationType, GGUFWriter
    from gguf.quants import quantize

    c = model.config
    writer = GGUFWriter(str(path), "llama")
    writer.add_block_count(c.num_layers)
    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_head_count(c.num_heads)
    writer.add_head_count_kv(c.num_kv_heads)
    writer.add_key_length(c.head_dim)
    writer.add_value_length(c.head_dim)
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    writer.add_rope_freq_base(c.rope_theta)
    writer.add_vocab_size(c.vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([f"<{i}>" for i in range(c.vocab_size)])
    writer.add_eos_token_id(c.vocab_size - 1)
    names = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
             "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down",
             "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}

    def add(name: str, w: torch.Tensor, kind: str) -> None:
        arr = w.detach().float().numpy()
        qtype = GGMLQuantizationType[kind]
        if qtype == GGMLQuantizationType.F32:
            writer.add_tensor(name, np.ascontiguousarray(arr))
        else:
            writer.add_tensor(name, quantize(arr, qtype), raw_dtype=qtype)

    add("token_embd.weight", model.embed_tokens.weight, embed_type)
    add("output_norm.weight", model.norm.weight, "F32")
    for i, layer in enumerate(model.decoder_layers):
        for module_name, module in [*layer.self_attn.named_children(), *layer.mlp.named_children(),
                                    ("input_layernorm", layer.input_layernorm),
                                    ("post_attention_layernorm", layer.post_attention_layernorm)]:
            w = module.weight
            if module_name == "q_proj":
                w = torch.from_numpy(_permute(w.numpy(), c.num_heads))
            elif module_name == "k_proj":
                w = torch.from_numpy(_permute(w.numpy(), c.num_kv_heads))
            kind = "F32" if w.dim() == 1 else linear_type
            add(f"blk.{i}.{names[module_name]}.weight", w, kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
