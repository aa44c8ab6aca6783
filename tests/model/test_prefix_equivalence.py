"""Property: however the prefix KV arrives, prefill + greedy decode give the same answer.

For a random tiny model and random prompt / prefix lengths (block-aligned or not), the greedy
tokens are identical and fp32 logits agree within 3e-5 of their largest magnitude between

- full recompute,
- the prefix supplied whole,
- the prefix supplied layer by layer (a layer source),
- chunked prefill (random chunk sizes),
- the prefix written to and read back from a KV store (memory and file backends), by chained
  block hashes, whole (`get`) or layer by layer (`get_layer`).

Every externally supplied prefix goes through the byte round trip
(kv_to_bytes -> Full Block [layers, tokens, bytes] -> kv_from_bytes), i.e. exactly what a store
would serve. New prefix sources are one more entry in `SOURCES`.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dualpath.kv import BlockGeometry, FileKVStore, KVStore, MemoryKVStore, block_hashes
from dualpath.model.generation import Generation, generate
from dualpath.model.kv_bytes import full_block_to_layers, kv_from_bytes, layers_to_full_block
from dualpath.model.loader import load_model
from dualpath.model.transformer import Past, Transformer

# fp32 agreement, relative to the largest value compared (logits reach +-30).
TOL = 3e-5


def _rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max()) / max(1.0, float(b.abs().max()))
NEW_TOKENS = 4


@dataclass(frozen=True)
class Case:
    prompt: list[int]
    prefix_len: int
    block_size: int
    chunks: list[int]


def _round_trip(model: Transformer, prefix_kv: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per-layer KV -> Full Block bytes -> per-layer KV (what a store serves)."""
    block = layers_to_full_block(prefix_kv)
    assert block.dtype == np.uint8 and block.shape[0] == model.config.num_layers
    return full_block_to_layers(block.copy(), model.config)


def _prefix_kv(model: Transformer, case: Case, n: int) -> list[torch.Tensor]:
    # computed as a previous turn would have: a prefill of the prefix alone
    return model.prefill(case.prompt[:n], logits="none").new_kv


def _gen(model: Transformer, case: Case, past: Past, past_tokens: int) -> Generation:
    return generate(model, case.prompt, max_tokens=NEW_TOKENS, past=past,
                    past_tokens=past_tokens)


def _whole(model: Transformer, case: Case) -> Generation:
    if case.prefix_len == 0:
        return _gen(model, case, None, 0)
    past = _round_trip(model, _prefix_kv(model, case, case.prefix_len))
    return _gen(model, case, past, case.prefix_len)


def _layerwise(model: Transformer, case: Case) -> Generation:
    if case.prefix_len == 0:
        return _gen(model, case, None, 0)
    block = layers_to_full_block(_prefix_kv(model, case, case.prefix_len))
    calls: list[int] = []

    def source(layer: int) -> torch.Tensor:
        calls.append(layer)
        return kv_from_bytes(block[layer].copy(), model.config)

    result = _gen(model, case, source, case.prefix_len)
    assert calls == list(range(model.config.num_layers))
    return result


def _chunked(model: Transformer, case: Case) -> Generation:
    """Prefill in chunks; each chunk's past is everything before it; then greedy decode."""
    from dualpath.model.kv_sequence import DenseKV

    layers: list[torch.Tensor] | None = None
    pos = 0
    logits = None
    for size in case.chunks:
        past = _round_trip(model, layers) if layers is not None else None
        out = model.prefill(case.prompt[pos : pos + size], start_pos=pos, past=past)
        layers = out.new_kv if layers is None else [
            torch.cat((a, b)) for a, b in zip(layers, out.new_kv, strict=True)]
        pos += size
        logits = out.logits
    assert pos == len(case.prompt) and layers is not None and logits is not None
    kv = DenseKV.from_layers(model.config, layers)
    tokens, all_logits = [], []
    for _ in range(NEW_TOKENS):
        token = int(torch.argmax(logits).item())
        tokens.append(token)
        all_logits.append(logits)
        if len(tokens) < NEW_TOKENS:
            logits = model.decode([token], [kv])[0]
    return Generation(tokens, kv, all_logits, "length")


def _via_store(make_store: Callable[[BlockGeometry, str], KVStore], layerwise: bool
               ) -> Callable[[Transformer, Case], Generation]:
    def run(model: Transformer, case: Case) -> Generation:
        bs = case.block_size
        identity = model.config.identity
        geometry = BlockGeometry.from_model_config(model.config, bs)
        with tempfile.TemporaryDirectory() as tmp:
            store = make_store(geometry, tmp)
            # a previous turn stored every full block of the prefix
            stored_blocks = case.prefix_len // bs
            prev = _prefix_kv(model, case, stored_blocks * bs) if stored_blocks else []
            for j, h in enumerate(block_hashes(case.prompt[: stored_blocks * bs], bs, identity)):
                store.put(h, layers_to_full_block([kv[j * bs : (j + 1) * bs] for kv in prev]))
            # this turn: look the prompt up, never covering its last token
            hashes = block_hashes(case.prompt, bs, identity)
            hits = min(store.longest_prefix(hashes), (len(case.prompt) - 1) // bs)
            assert hits == min(stored_blocks, (len(case.prompt) - 1) // bs)
            if hits == 0:
                return _gen(model, case, None, 0)
            if layerwise:
                def source(layer: int) -> torch.Tensor:
                    parts = [store.get_layer(h, layer) for h in hashes[:hits]]
                    assert all(p is not None for p in parts)
                    return kv_from_bytes(np.concatenate([p[0] for p in parts if p is not None]),
                                         model.config)
                return _gen(model, case, source, hits * bs)
            blocks = [store.get(h) for h in hashes[:hits]]
            assert all(b is not None for b in blocks)
            full = np.concatenate([b for b in blocks if b is not None], axis=1)
            return _gen(model, case, full_block_to_layers(full, model.config), hits * bs)

    return run


SOURCES: dict[str, Callable[[Transformer, Case], Generation]] = {
    "whole": _whole,
    "layerwise": _layerwise,
    "chunked": _chunked,
    "memory-store": _via_store(lambda g, _tmp: MemoryKVStore(g), layerwise=False),
    "file-store": _via_store(lambda g, tmp: FileKVStore(tmp, g), layerwise=False),
    "file-store-layerwise": _via_store(lambda g, tmp: FileKVStore(tmp, g), layerwise=True),
}

_MODELS: dict[str, Transformer] = {}


def _model(name: str) -> Transformer:
    if name not in _MODELS:
        _MODELS[name] = load_model(name, seed=7)[0]
    return _MODELS[name]


@st.composite
def cases(draw: st.DrawFn) -> Case:
    block_size = draw(st.sampled_from([4, 8, 16]))
    length = draw(st.integers(min_value=2, max_value=120))
    prompt = draw(st.lists(st.integers(0, 255), min_size=length, max_size=length))
    aligned = draw(st.booleans())
    if aligned:
        prefix_len = block_size * draw(st.integers(0, (length - 1) // block_size))
    else:
        prefix_len = draw(st.integers(0, length - 1))
    chunks: list[int] = []
    left = length
    while left:
        size = draw(st.integers(1, left))
        chunks.append(size)
        left -= size
    return Case(prompt, prefix_len, block_size, chunks)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases(), model_name=st.sampled_from(["tiny", "tiny-qwen2", "tiny-llama3"]))
def test_every_prefix_source_matches_recompute(case: Case, model_name: str) -> None:
    model = _model(model_name)
    reference = _gen(model, case, None, 0)
    for name, source in SOURCES.items():
        got = source(model, case)
        assert got.token_ids == reference.token_ids, name
        for a, b in zip(got.logits, reference.logits, strict=True):
            diff = _rel_diff(a, b)
            assert diff <= TOL, f"{name}: logits differ by {diff}"
        # the decode cache holds the same KV as recompute
        for layer in range(model.config.num_layers):
            diff = _rel_diff(got.kv.layer_kv(layer), reference.kv.layer_kv(layer))
            assert diff <= TOL, f"{name}: KV of layer {layer} differs by {diff}"


def test_prefix_logits_of_all_new_tokens_match() -> None:
    """logits="all" rows for the new tokens equal the full recompute rows."""
    model = _model("tiny")
    prompt = list(range(30, 130))
    full = model.prefill(prompt, logits="all")
    prefix = _round_trip(model, model.prefill(prompt[:37]).new_kv)
    part = model.prefill(prompt[37:], start_pos=37, past=prefix, logits="all")
    assert full.logits is not None and part.logits is not None
    assert part.logits.shape == (63, model.config.vocab_size)
    assert _rel_diff(part.logits, full.logits[37:]) <= TOL
