"""Mooncake `hash_ids` drive prefix hits in the simulator as in the HTTP target: the tokens
the target would send (hash blocks of 512 tokens, then the agent's own), looked up on
arrival in 64-token storage blocks that earlier requests persisted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dualpath.kv.hashing import block_hashes
from dualpath.sim.api import agents_from_workload, simulate
from dualpath.sim.config import SimConfig
from dualpath.sim.prefix import PrefixStore
from dualpath.workload.mooncake import import_mooncake
from dualpath.workload.tokens import TokenSource
from dualpath.workload.workload import online_workload

# (timestamp ms, input_length, hash_ids); requests 100 s apart finish long before the next,
# except the second, which arrives 1 ms after the first (its prefix is not stored yet).
TRACE = [
    (0, 1536, [1, 2, 3]),
    (1, 1536, [1, 2, 3]),
    (100_000, 2048, [1, 2, 3, 4]),   # shares 3 ids with the first: 1536 tokens
    (200_000, 1000, [1, 2]),         # 1000 tokens are hash-covered; 960 in whole blocks
    (300_000, 700, [5, 6]),          # new content
    (400_000, 1500, [1, 7, 8]),      # shares one id: 512
    (500_000, 2048, [1, 2, 3, 4]),   # identical prompt: all but the last block (1984)
    (600_000, 3000, [1, 2, 3, 4]),   # 2048 covered by ids, the rest its own tokens
]
EXPECTED_CACHED = [0, 0, 1536, 960, 0, 512, 1984, 2048]
BLOCK = 64


def _write(path: Path) -> Path:
    path.write_text("".join(json.dumps({"timestamp": t, "input_length": n, "output_length": 4,
                                        "hash_ids": ids}) + "\n" for t, n, ids in TRACE))
    return path


def _simulate(path: Path, system: str = "dualpath") -> list[int]:
    trajs = import_mooncake(path).trajectories
    wl = online_workload(trajs, aps=None, seed=0, use_trace_arrivals=True)
    agents, ids = agents_from_workload(wl)
    cfg = SimConfig(model="ds-27b", pd=(1, 1), mode="online", system=system,
                    block_tokens=BLOCK, timeline_bin_s=None)
    records = simulate(cfg, agents, agent_ids=ids).records
    by_agent = {r.agent_id: r.cached_tokens for r in records}
    return [by_agent[i] for i in range(len(TRACE))]


def _token_level_reference(path: Path) -> list[int]:
    """What a real store finds: chained 64-token block hashes of the tokens the HTTP target
    sends; a request's whole prompt blocks are stored after its first token (here: before
    the next request 100 s later, but after the second request's lookup 1 ms later)."""
    trajs = import_mooncake(path).trajectories
    tokens = TokenSource(49_152, forbidden_ids=range(17), seed=0)
    stored: set[str] = set()
    prompts = [tokens.turn_append(t, f"agent-{i}", 0) for i, t in enumerate(trajs)]
    hits, pending = [], []
    for i, prompt in enumerate(prompts):
        if i != 1:  # the second request's lookup precedes the first request's persisting
            stored.update(pending)
            pending = []
        hashes = block_hashes(prompt, BLOCK, "model")
        n = 0
        while n < len(hashes) and hashes[n] in stored and n < (len(prompt) - 1) // BLOCK:
            n += 1
        hits.append(n * BLOCK)
        pending.extend(hashes)
    return hits


def test_reference_is_the_hand_computed_table(tmp_path: Path) -> None:
    assert _token_level_reference(_write(tmp_path / "t.jsonl")) == EXPECTED_CACHED


@pytest.mark.parametrize("system", ["basic", "dualpath", "oracle"])
def test_mooncake_hash_ids_give_the_hits_they_imply(tmp_path: Path, system: str) -> None:
    path = _write(tmp_path / "mooncake.jsonl")
    cached = _simulate(path, system)
    assert cached == EXPECTED_CACHED
    total = sum(n for _, n, _ in TRACE)
    assert sum(cached) / total == pytest.approx(sum(EXPECTED_CACHED) / total)


def test_shared_hits_read_from_storage(tmp_path: Path) -> None:
    """The hits are real reads: the bytes cross an SNIC."""
    trajs = import_mooncake(_write(tmp_path / "m.jsonl")).trajectories
    agents, _ = agents_from_workload(online_workload(trajs, aps=None, seed=0, use_trace_arrivals=True))
    run = simulate(SimConfig(model="ds-27b", pd=(1, 1), mode="online", timeline_bin_s=None), agents)
    r = run.report
    assert r["bytes_read_pe_path"] + r["bytes_read_de_path"] == pytest.approx(
        sum(EXPECTED_CACHED) * r["kv_bytes_per_token"], rel=1e-9)


def test_without_hash_ids_first_turns_miss() -> None:
    assert PrefixStore.for_agents([(0.0, [(100, 1)]), (0.0, [(100, 1)], ((), 512))], 64) is None
