"""The layer source is called in layer order, each just before its layer runs; on_layer_kv
fires once per layer with that layer's new KV."""

from __future__ import annotations

import torch

from dualpath.model.tokenizer import Tokenizer
from dualpath.model.transformer import Transformer


def test_layer_source_and_on_layer_kv_interleave(tiny: tuple[Transformer, Tokenizer]) -> None:
    model, _ = tiny
    n_layers = model.config.num_layers
    prompt = list(range(10, 40))
    prefix = model.prefill(prompt[:20]).new_kv
    events: list[tuple[str, int]] = []
    seen_kv: dict[int, torch.Tensor] = {}

    def source(layer: int) -> torch.Tensor:
        events.append(("load", layer))
        return prefix[layer]

    def on_kv(layer: int, kv: torch.Tensor) -> None:
        events.append(("done", layer))
        seen_kv[layer] = kv.clone()

    out = model.prefill(prompt[20:], start_pos=20, past=source, on_layer_kv=on_kv)
    expected = [e for i in range(n_layers) for e in (("load", i), ("done", i))]
    assert events == expected
    assert sorted(seen_kv) == list(range(n_layers))
    for i in range(n_layers):
        assert seen_kv[i].shape == (10, 2, model.config.num_kv_heads, model.config.head_dim)
        assert torch.equal(seen_kv[i], out.new_kv[i])


def test_source_sees_earlier_layers_finished(tiny: tuple[Transformer, Tokenizer]) -> None:
    """A loader may fill layer i while layers < i compute: the source of layer i is only asked
    after layer i-1 reported its KV."""
    model, _ = tiny
    prefix = model.prefill([1, 2, 3, 4]).new_kv
    finished: list[int] = []
    asked_after: dict[int, list[int]] = {}

    def source(layer: int) -> torch.Tensor:
        asked_after[layer] = list(finished)
        return prefix[layer]

    model.prefill([5, 6], start_pos=4, past=source,
                  on_layer_kv=lambda layer, kv: finished.append(layer))
    for layer, done in asked_after.items():
        assert done == list(range(layer))


def test_past_length_mismatch_is_an_error(tiny: tuple[Transformer, Tokenizer]) -> None:
    import pytest

    from dualpath.core.errors import UserInputError

    model, _ = tiny
    prefix = model.prefill([1, 2, 3, 4]).new_kv
    with pytest.raises(UserInputError, match="past has 4 tokens"):
        model.prefill([5], start_pos=5, past=prefix)
