"""Cross-check against `transformers` with identical random weights: logits and decode steps.

Also covers the Hugging Face checkpoint loader: a model saved with `save_pretrained` (plus a
tokenizer.json) loads through `load_model(dir)` with the same logits.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dualpath.model.kv_sequence import DenseKV
from dualpath.model.loader import load_model
from dualpath.model.transformer import Transformer

transformers = pytest.importorskip("transformers")

# fp32 agreement, relative to the largest value compared (logits reach +-30).
TOL = 3e-5


def _rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max()) / max(1.0, float(b.abs().max()))


def _hf_model(model: Transformer) -> torch.nn.Module:
    c = model.config
    rope: dict[str, object] = {"rope_type": "default", "rope_theta": c.rope_theta}
    if c.rope_scaling:
        rope.update(dict(c.rope_scaling))
        rope["rope_theta"] = c.rope_theta
    common = dict(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_layers, num_attention_heads=c.num_heads,
        num_key_value_heads=c.num_kv_heads, head_dim=c.head_dim,
        max_position_embeddings=c.max_position_embeddings, rms_norm_eps=c.rms_norm_eps,
        rope_parameters=rope, tie_word_embeddings=c.tie_word_embeddings,
    )
    if c.attention_bias:
        hf = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common))
    else:
        hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**common, attention_bias=False))
    state = {("lm_head.weight" if k == "lm_head.weight" else f"model.{k}"): v
             for k, v in model.state_dict().items()}
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert not unexpected
    assert all("rotary" in m for m in missing), missing
    return hf.eval()


@pytest.mark.parametrize("preset", ["tiny", "tiny-mha", "tiny-qwen2", "tiny-llama3"])
def test_logits_and_decode_match_transformers(preset: str) -> None:
    model, _ = load_model(preset, seed=3)
    hf = _hf_model(model)
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, model.config.vocab_size, (300,), generator=gen).tolist()
    with torch.inference_mode():
        ref = hf(torch.tensor([prompt])).logits[0]
    ours = model.prefill(prompt, logits="all")
    assert ours.logits is not None
    assert _rel_diff(ours.logits, ref) <= TOL
    # greedy decode steps: each step's logits equal transformers' on the whole sequence
    kv = DenseKV.from_layers(model.config, ours.new_kv)
    seq = list(prompt)
    token = int(ours.logits[-1].argmax())
    for _ in range(5):
        seq.append(token)
        step = model.decode([token], [kv])[0]
        with torch.inference_mode():
            ref_step = hf(torch.tensor([seq])).logits[0, -1]
        assert _rel_diff(step, ref_step) <= TOL
        token = int(step.argmax())
    assert kv.num_tokens == len(seq)


def test_batched_decode_of_different_lengths_matches_single(tiny: tuple) -> None:
    model, _ = tiny
    prompts = [list(range(5, 5 + n)) for n in (3, 40, 17)]
    caches = [DenseKV.from_layers(model.config, model.prefill(p).new_kv) for p in prompts]
    singles = [DenseKV.from_layers(model.config, model.prefill(p).new_kv) for p in prompts]
    tokens = [7, 8, 9]
    for _ in range(3):
        batched = model.decode(tokens, caches)
        for b in range(3):
            single = model.decode([tokens[b]], [singles[b]])[0]
            assert _rel_diff(batched[b], single) <= TOL
        tokens = [int(t) for t in batched.argmax(-1)]
    assert [c.num_tokens for c in caches] == [6, 43, 20]


def _write_tokenizer_json(directory: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {chr(ord("a") + i): i for i in range(26)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": "{% for m in messages %}{{ m['content'] }}{% endfor %}"}))


@pytest.mark.parametrize("preset", ["tiny", "tiny-qwen2"])
def test_hf_checkpoint_directory_loads(preset: str, tmp_path: Path) -> None:
    model, _ = load_model(preset, seed=5)
    hf = _hf_model(model)
    hf.save_pretrained(tmp_path)
    _write_tokenizer_json(tmp_path)
    loaded, tokenizer = load_model(str(tmp_path))
    assert loaded.config.weights_id.startswith("safetensors-")
    assert loaded.config.attention_bias == model.config.attention_bias
    assert loaded.config.tie_word_embeddings == model.config.tie_word_embeddings
    assert loaded.config.rope_theta == model.config.rope_theta
    prompt = list(range(60))
    a = model.prefill(prompt, logits="all").logits
    b = loaded.prefill(prompt, logits="all").logits
    assert a is not None and b is not None
    assert _rel_diff(a, b) <= TOL
    assert tokenizer.encode_chat([{"role": "user", "content": "abc"}]) == [0, 1, 2]
    # the digest is stable: loading again gives the same identity
    assert load_model(str(tmp_path))[0].config.identity == loaded.config.identity
