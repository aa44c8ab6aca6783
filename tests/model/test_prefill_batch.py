"""prefill_batch: several sequences (with and without prefixes) in one pass equal one by one."""

from __future__ import annotations

import torch

from dualpath.model.transformer import PrefillRequest, Transformer


def test_batch_equals_individual(tiny: tuple) -> None:
    model: Transformer = tiny[0]
    a = list(range(3, 50))
    b = list(range(100, 107))
    c = list(range(200, 290))
    prefix_c = model.prefill(c[:64]).new_kv
    calls: list[tuple[str, int]] = []

    def source(layer: int) -> torch.Tensor:
        calls.append(("c", layer))
        return prefix_c[layer]

    done: list[tuple[str, int]] = []
    reqs = [
        PrefillRequest(a, logits="all"),
        PrefillRequest(b[2:], start_pos=2, past=model.prefill(b[:2]).new_kv,
                       on_layer_kv=lambda i, kv: done.append(("b", i))),
        PrefillRequest(c[64:], start_pos=64, past=source, logits="last"),
        PrefillRequest([5], logits="none"),
    ]
    outs = model.prefill_batch(reqs)
    singles = [model.prefill(r.token_ids, r.start_pos, r.past, logits=r.logits) for r in reqs]
    for got, ref in zip(outs, singles, strict=True):
        if ref.logits is None:
            assert got.logits is None
        else:
            assert got.logits is not None and got.logits.shape == ref.logits.shape
            assert float((got.logits - ref.logits).abs().max()) <= 1e-4
        for g, r in zip(got.new_kv, ref.new_kv, strict=True):
            assert g.shape == r.shape and g.is_contiguous()
            assert float((g - r).abs().max()) <= 1e-4
    n = model.config.num_layers
    assert calls[:n] == [("c", i) for i in range(n)]  # batch pass, in layer order
    assert done == [("b", i) for i in range(n)]
    assert model.prefill_batch([]) == []
