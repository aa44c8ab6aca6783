"""DualPath on real vLLM: a 1P1D cluster behind the router against plain vLLM (`make test-vllm`).

For each forced read path, a multi-turn greedy chat goes through the router and, turn by
turn, the same messages go to a plain vLLM instance (its own prefix cache, no connector):
the answers must be identical, turns after the first must report `cached_tokens > 0`, and
the connectors' byte counters must show the hit KV moved on the forced path only — on the
DE path through the decode instance (its store reads and its relay to the prefill
instance), with the prefill node's SNIC receiving nothing.

Two checks guard the checks: the blocks the decode instance persisted hold OUR layout (our
own PyTorch model recomputes the same K/V for those tokens), and poisoning the stored KV
makes the router's answer differ from plain vLLM (so equality is not vacuous).
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch
from vllm_helpers import VllmTestCluster, get_text, post

pytestmark = pytest.mark.vllm

SYSTEM = ("You are a meticulous assistant for a software team. You answer in short, precise "
          "sentences and you always mention the file you are talking about. ") * 4
QUESTIONS = (
    "The build fails in src/parser.c with an undefined symbol. What should I check first?",
    "I checked that. The symbol is defined in lib/tokens.c. What next?",
    "It links now, but tests/test_parser.py fails on an empty input. Any idea why?",
)
MAX_TOKENS = 24


def _chat(url: str, messages: list[dict[str, str]]) -> dict[str, Any]:
    return post(url + "/v1/chat/completions",
                {"model": "smollm2", "messages": messages, "temperature": 0,
                 "max_tokens": MAX_TOKENS})


def _conversation(vc: VllmTestCluster, side: str, tag: str) -> list[dict[str, Any]]:
    """Run the chat through the router and through plain vLLM; return per-turn records."""
    messages = [{"role": "system", "content": f"[{tag}] " + SYSTEM}]
    turns = []
    for question in QUESTIONS:
        messages.append({"role": "user", "content": question})
        ours = _chat(vc.routers[side].url, messages)
        ref = _chat(vc.plain_url, messages)
        text = ours["choices"][0]["message"]["content"]
        turns.append({"ours": text, "ref": ref["choices"][0]["message"]["content"],
                      "usage": ours["usage"], "report": ours["kv_transfer_params"]["dualpath"]})
        messages.append({"role": "assistant", "content": text})
    return turns


def _delta(after: dict[str, dict[str, float]], before: dict[str, dict[str, float]],
           inst: str, name: str) -> float:
    return after.get(inst, {}).get(name, 0.0) - before.get(inst, {}).get(name, 0.0)


def _stored_block_bytes(vc: VllmTestCluster) -> int:
    from dualpath.integrations.vllm.identity import geometry_of, model_config
    from dualpath.kv.block_value import value_bytes

    cfg = model_config(vc.cfg.model_dir, vc.cfg.dtype)
    return value_bytes(geometry_of(cfg, vc.cfg.block_tokens), "0" * 64)


def _kv_bytes_per_token(vc: VllmTestCluster) -> int:
    from dualpath.integrations.vllm.identity import model_config

    return model_config(vc.cfg.model_dir, vc.cfg.dtype).kv_bytes_per_token


@pytest.mark.parametrize("side", ["pe", "de"])
def test_multiturn_chat_matches_plain_vllm(vllm_cluster: VllmTestCluster, side: str) -> None:
    vc = vllm_cluster
    before, snic_before = vc.stats(), vc.snic_rx_bytes()
    turns = _conversation(vc, side, f"equality-{side}")
    after, snic_after = vc.stats(), vc.snic_rx_bytes()

    for i, t in enumerate(turns):
        assert t["ours"] == t["ref"], f"turn {i}: router {t['ours']!r} != plain {t['ref']!r}"
        assert t["report"]["read_side"] == side
        assert not t["report"]["relay_failed"]
    assert turns[0]["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    for t in turns[1:]:
        assert t["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
    hit_tokens = sum(t["report"]["hit_tokens"] for t in turns)
    hit_bytes = hit_tokens * _kv_bytes_per_token(vc)
    assert hit_bytes > 0
    # the SNIC carries each block as stored: its header + the Full Block
    snic_bytes = hit_tokens // vc.cfg.block_tokens * _stored_block_bytes(vc)

    pe_read = _delta(after, before, "prefill0", "bytes_read_pe_path")
    de_read = _delta(after, before, "decode0", "bytes_read_de_path")
    relayed = _delta(after, before, "decode0", "hit_bytes_relayed")
    p_snic = snic_after["prefill0"] - snic_before["prefill0"]
    d_snic = snic_after["decode0"] - snic_before["decode0"]
    if side == "pe":
        assert pe_read == hit_bytes and p_snic == snic_bytes
        assert de_read == 0 and relayed == 0 and d_snic == 0
    else:
        assert de_read == hit_bytes and d_snic == snic_bytes and relayed == hit_bytes
        assert pe_read == 0 and p_snic == 0
    assert _delta(after, before, "decode0", "relays_failed") == 0
    assert _delta(after, before, "prefill0", "relays_failed") == 0
    assert _delta(after, before, "decode0", "blocks_persisted") > 0

    metrics = get_text(vc.routers[side].url + "/metrics")
    assert 'dualpath_bytes_read_total{path="pe"}' in metrics
    assert f'dualpath_router_requests_total{{read_side="{side}"}} {len(QUESTIONS)}' in metrics


def test_persisted_blocks_hold_our_kv_layout(vllm_cluster: VllmTestCluster) -> None:
    """A block vLLM's decode instance persisted equals the KV our own model computes."""
    from dualpath.integrations.vllm.identity import geometry_of, model_config
    from dualpath.kv.file_store import FileKVStore
    from dualpath.kv.hashing import block_hashes
    from dualpath.model.kv_bytes import full_block_to_layers
    from dualpath.model.loader import load_model

    vc = vllm_cluster
    messages = [{"role": "system", "content": "[layout] " + SYSTEM},
                {"role": "user", "content": QUESTIONS[0]}]
    _chat(vc.routers["pe"].url, messages)
    ids = post(vc.plain_url + "/tokenize", {"model": "smollm2", "messages": messages,
                                            "add_generation_prompt": True})["tokens"]
    cfg = model_config(vc.cfg.model_dir, vc.cfg.dtype)
    store = FileKVStore(vc.cfg.store_path, geometry_of(cfg, vc.cfg.block_tokens))
    hashes = block_hashes(ids, vc.cfg.block_tokens, cfg.identity)
    assert store.longest_prefix(hashes) == len(hashes) > 0
    model, _ = load_model(vc.cfg.model_dir, dtype=vc.cfg.dtype)
    assert model.config.identity == cfg.identity
    n = vc.cfg.block_tokens
    ours = model.prefill(ids[:len(hashes) * n]).new_kv
    for b in (0, len(hashes) - 1):
        block = store.get(hashes[b])
        assert block is not None
        stored = full_block_to_layers(block, cfg)
        for layer in (0, cfg.num_layers // 2, cfg.num_layers - 1):
            want = ours[layer][b * n:(b + 1) * n]
            tol = 2e-3 if vc.cfg.dtype == "float32" else 5e-2
            torch.testing.assert_close(stored[layer].float(), want.float(), atol=tol, rtol=tol)


@pytest.mark.parametrize("side", ["pe", "de"])
def test_poisoned_store_changes_the_answer(vllm_cluster: VllmTestCluster, side: str) -> None:
    """Negative control: wrong KV in the store (valid checksums) must change the answer."""
    from dualpath.integrations.vllm.identity import geometry_of, model_config
    from dualpath.kv.file_store import FileKVStore
    from dualpath.kv.hashing import block_hashes
    from dualpath.model.kv_bytes import torch_dtype

    vc = vllm_cluster
    messages = [{"role": "system", "content": f"[poison-{side}] " + SYSTEM},
                {"role": "user", "content": QUESTIONS[0]}]
    first = _chat(vc.routers[side].url, messages)
    messages += [{"role": "assistant", "content": first["choices"][0]["message"]["content"]},
                 {"role": "user", "content": QUESTIONS[1]}]
    ids = post(vc.plain_url + "/tokenize", {"model": "smollm2", "messages": messages,
                                            "add_generation_prompt": True})["tokens"]
    cfg = model_config(vc.cfg.model_dir, vc.cfg.dtype)
    store = FileKVStore(vc.cfg.store_path, geometry_of(cfg, vc.cfg.block_tokens))
    hashes = block_hashes(ids, vc.cfg.block_tokens, cfg.identity)
    stored = store.longest_prefix(hashes)
    assert stored >= 2
    gen = torch.Generator().manual_seed(0)
    for i, h in enumerate(hashes[:stored]):
        block = store.get(h)
        assert block is not None
        kv = torch.from_numpy(block).view(torch_dtype(cfg.kv_dtype))
        kv += 2.0 * torch.randn(kv.shape, generator=gen).to(kv.dtype)  # valid CRCs, wrong KV
        os.unlink(store.path_of(h))
        store.put(h, block, hashes[i - 1] if i else None)
    ours = _chat(vc.routers[side].url, messages)
    ref = _chat(vc.plain_url, messages)
    assert ours["kv_transfer_params"]["dualpath"]["hit_tokens"] > 0
    assert ours["choices"][0]["message"]["content"] != ref["choices"][0]["message"]["content"]
