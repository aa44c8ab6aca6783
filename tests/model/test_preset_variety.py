"""The random presets produce text-like variety and depend on their whole context, so tests
that compare outputs (read paths, --no-kv-store, fail-over) can see wrong KV: a model that
prints one token forever would pass them with garbage KV."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dualpath.kv.file_store import FileKVStore
from dualpath.kv.hashing import block_hashes
from dualpath.kv.layout import BlockGeometry
from dualpath.model.generation import generate
from dualpath.model.kv_bytes import full_block_to_layers, kv_from_bytes, layers_to_full_block
from dualpath.model.loader import load_model
from dualpath.model.transformer import Transformer

PROMPTS = [[(37 * i * (k + 1) + 11 * k + 5) % 256 for i in range(150)] for k in range(4)]
BLOCK = 64


@pytest.mark.parametrize("preset", ["tiny", "tiny-mha", "tiny-qwen2", "tiny-llama3", "small"])
def test_greedy_output_varies_like_text(preset: str) -> None:
    model, _ = load_model(preset, seed=0)
    for prompt in PROMPTS:
        tokens = generate(model, prompt, max_tokens=32).token_ids
        assert len(set(tokens)) >= 8, (preset, tokens)
    # ... and different prompts give different answers.
    answers = {tuple(generate(model, p, max_tokens=16).token_ids) for p in PROMPTS}
    assert len(answers) == len(PROMPTS)


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_one_corrupt_layer_of_one_stored_block_changes_the_answer(tmp_path: Path,
                                                                  layer: int) -> None:
    """The block is corrupted *under* a valid checksum (re-put with the bad values), so the
    store serves it; the greedy answer from the store's prefix must differ from the answer
    over the true KV (which equals recompute)."""
    model, _ = load_model("tiny", seed=0)
    cfg = model.config
    prompt = PROMPTS[0]
    store = FileKVStore(tmp_path / "store", BlockGeometry.from_model_config(cfg, BLOCK))
    hashes = block_hashes(prompt[: 2 * BLOCK], BLOCK, cfg.identity)
    kv = model.prefill(prompt[: 2 * BLOCK], logits="none").new_kv
    for b, h in enumerate(hashes):
        store.put(h, layers_to_full_block([t[b * BLOCK:(b + 1) * BLOCK] for t in kv]))
    cold = generate(model, prompt, max_tokens=16).token_ids
    assert _from_store(model, store, hashes, prompt) == cold
    good = store.get(hashes[1])
    assert good is not None
    layers = full_block_to_layers(good.copy(), cfg)
    noise = torch.randn(layers[layer].shape, generator=torch.Generator().manual_seed(layer))
    layers[layer] = layers[layer] + 0.5 * noise  # plausible values, wrong ones
    corrupt = FileKVStore(tmp_path / "corrupt", store.geometry)
    corrupt.put(hashes[0], store.get(hashes[0]))  # type: ignore[arg-type]
    corrupt.put(hashes[1], layers_to_full_block(layers))  # a valid checksum over bad bytes
    assert _from_store(model, corrupt, hashes, prompt) != cold


def _from_store(model: Transformer, store: FileKVStore, hashes: list[str],
                prompt: list[int]) -> list[int]:
    blocks = [store.get(h) for h in hashes]
    assert all(b is not None for b in blocks)
    prefix = np.concatenate(blocks, axis=1)  # type: ignore[arg-type]  # [layers, T, B]
    past = [kv_from_bytes(prefix[i].copy(), model.config) for i in range(model.config.num_layers)]
    return generate(model, prompt, max_tokens=16, past=past,
                    past_tokens=len(hashes) * BLOCK).token_ids
