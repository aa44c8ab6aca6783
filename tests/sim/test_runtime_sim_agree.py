"""The runtime and the simulator turn the same small agentic workload into the same scheduler
inputs and make the same decisions, call for call (issue 7).

One workload description (per agent, per turn: append tokens, answer tokens) drives both: a
real `LocalCluster` (tiny random model, engine processes on 127.0.0.1) and a `Simulator`
set up like it (same layout, block size, α, β, quota, decode KV room). Both run in waves:
wave k is turn k of every agent, submitted together; wave k + 1 starts only when every turn
of wave k has finished (and, in the runtime, its blocks are in the store). So each wave
reaches each scheduler in one call, on an idle cluster, and timing cannot legitimately make
the two differ: any difference in prompt / cached / reserved tokens, in the cluster view or
in the placements is a divergence between how the two systems model a turn.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from dualpath.core.config import ClusterConfig
from dualpath.core.requests import FinishEvent, GenerateRequest, SamplingParams, TokenEvent
from dualpath.kv.hashing import block_hashes
from dualpath.runtime.cluster import LocalCluster
from dualpath.scheduler import ClusterView, RequestInfo
from dualpath.sim.config import SimConfig
from dualpath.sim.hardware import load_hardware
from dualpath.sim.simulator import Simulator
from dualpath.sim.state import SimRequest

pytestmark = pytest.mark.timeout(240)

BLOCK = 16
PD = (1, 2)
ENGINES_PER_NODE = 1
# Decode KV pool per engine: 96 blocks of the tiny model (16 tokens x 768 B/token).
DECODE_KV_BYTES = 96 * BLOCK * 768
# (append_tokens, answer_tokens) per turn, per agent. Chosen to hit the block edges: agent 0's
# first turn and agent 4's second end exactly on a block (40 + 8 = 48; 64 + 6 + 10 + 16 = 96),
# agent 1 answers with one token, agent 3 appends whole blocks.
WORKLOAD: list[list[tuple[int, int]]] = [
    [(40, 8), (30, 9), (17, 4)],
    [(23, 1), (50, 16), (9, 7)],
    [(70, 5), (16, 11), (33, 2)],
    [(32, 9), (48, 3), (64, 6)],
    [(64, 6), (10, 16), (28, 10)],
]
TURNS = len(WORKLOAD[0])

Key = tuple[int, int]  # (agent, turn)


def _tokens(agent: int, turn: int, n: int) -> list[int]:
    """Synthetic token ids of one append (distinct per agent and turn, below the tiny vocab)."""
    return [(agent * 37 + turn * 11 + 7 * i) % 250 + 1 for i in range(n)]


# ---- the runtime, wave by wave ----------------------------------------------------------------


async def _turn(cluster: LocalCluster, rid: str, prompt: list[int], gen: int) -> list[int]:
    params = SamplingParams(max_tokens=gen, temperature=0.0, ignore_eos=True)
    out: list[int] = []
    finish = None
    async for event in cluster.generate(GenerateRequest(rid, tuple(prompt), params)):
        if isinstance(event, TokenEvent):
            out.extend(event.token_ids)
        elif isinstance(event, FinishEvent):
            finish = event
    assert finish is not None and finish.error is None, finish
    assert len(out) == gen  # ignore_eos: exactly the answer length the simulator uses
    return out


async def _wait_blocks_stored(cluster: LocalCluster, contexts: list[list[int]]) -> None:
    """The decode engines persist blocks from a writer thread after `Finished`: wait until the
    stored prefix of every agent's context stops growing."""
    assert cluster.store is not None
    identity = cluster.model_config.identity
    hashes = [block_hashes(c[: len(c) // BLOCK * BLOCK], BLOCK, identity) for c in contexts]
    last, stable, deadline = None, 0, time.monotonic() + 20
    while stable < 3 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        now = [cluster.store.longest_prefix(h) for h in hashes]
        stable = stable + 1 if now == last else 0
        last = now


async def _run_runtime(tmp_path: Path) -> LocalCluster:
    config = ClusterConfig(
        model="tiny", store_path=str(tmp_path / "store"), block_size=BLOCK,
        prefill_nodes=PD[0], decode_nodes=PD[1], engines_per_node=ENGINES_PER_NODE,
        decode_kv_bytes=DECODE_KV_BYTES, pe_buffer_bytes=8 << 20, de_buffer_bytes=8 << 20,
        system="dualpath", engine_start_timeout_s=120,
    )
    cluster = LocalCluster(config, record_scheduler_calls=True)
    await cluster.start()
    try:
        contexts: list[list[int]] = [[] for _ in WORKLOAD]
        for turn in range(TURNS):
            prompts = [ctx + _tokens(a, turn, WORKLOAD[a][turn][0])
                       for a, ctx in enumerate(contexts)]
            answers = await asyncio.gather(*(
                _turn(cluster, f"a{a}-t{turn}", p, WORKLOAD[a][turn][1])
                for a, p in enumerate(prompts)))
            contexts = [p + ans for p, ans in zip(prompts, answers, strict=True)]
            await _wait_blocks_stored(cluster, contexts)
    finally:
        await cluster.shutdown()
    return cluster


def _runtime_key(rid: Any) -> Key:
    agent, turn = str(rid).split("-")
    return int(agent[1:]), int(turn[1:])


# ---- the simulator, wave by wave ----------------------------------------------------------------


class WaveSimulator(Simulator):
    """Holds every agent's next turn back until the whole wave has finished, then lets the
    next wave arrive at one instant (so it reaches the scheduler in one call)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.keys: dict[int, Key] = {}
        self._held: list[SimRequest] = []
        self._wave = 0

    def _new_turn(self, agent: int, turn: int, done_tokens: int) -> SimRequest:
        req = super()._new_turn(agent, turn, done_tokens)
        self.keys[req.rid] = (agent, turn)
        return req

    def _on_arrive(self, now: float, req: SimRequest) -> Any:
        if req.turn == self._wave:
            return super()._on_arrive(now, req)
        self._held.append(req)
        if len(self._held) < len(self.turns):
            return None
        self._wave += 1
        wave = sorted(self._held, key=lambda r: r.agent)
        self._held = []
        return [(now, self._on_arrive, r) for r in wave]


def _run_sim(cluster: LocalCluster) -> WaveSimulator:
    sc = cluster._scheduler.config if cluster._scheduler else None
    assert sc is not None
    capacity = {e.kv_capacity_tokens for e in cluster.books.ledger.engines.values() if e.role == "decode"}
    assert len(capacity) == 1
    cfg = SimConfig(
        model="ds-27b", system="dualpath", pd=PD, block_tokens=BLOCK, read_path="auto",
        alpha_tokens=sc.alpha_tokens, beta_tokens=sc.beta_tokens,
        de_kv_capacity_tokens=capacity.pop(), timeline_bin_s=None,
        log_decisions=True, record_scheduler_inputs=True,
    )
    # Engines per node = the runtime's (the simulator's "GPUs per node").
    hardware = replace(load_hardware(None), gpus_per_node=ENGINES_PER_NODE)
    sim = WaveSimulator(cfg, [(0.0, turns) for turns in WORKLOAD], hardware=hardware)
    sim.run()
    assert len(sim.finished) == len(WORKLOAD) * TURNS
    assert sim.sched_config == sc  # same α, β, quota, policies
    return sim


# ---- the comparison -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Waves:
    """Per wave, both systems' scheduler inputs and decisions, keyed by (agent, turn)."""

    infos_rt: list[list[tuple[Key, int, int, int]]]
    infos_sim: list[list[tuple[Key, int, int, int]]]
    views_rt: list[ClusterView]
    views_sim: list[ClusterView]
    decided_rt: list[list[tuple[Key, int, int, str]]]
    decided_sim: list[list[tuple[Key, int, int, str]]]


def _infos(infos: Any, key: Any) -> list[tuple[Key, int, int, int]]:
    return [(key(i.request_id), i.prompt_tokens, i.cached_tokens, i.decode_reserve_tokens)
            for i in infos]


def _content(view: ClusterView) -> tuple[Any, ...]:
    """The view's content with engines in id order (the listed order is checked apart)."""
    return (tuple(sorted(view.engines, key=lambda e: e.engine_id)), view.nodes)


@pytest.fixture(scope="module")
def waves(tmp_path_factory: pytest.TempPathFactory) -> Waves:
    cluster = asyncio.run(_run_runtime(tmp_path_factory.mktemp("agree")))
    sim = _run_sim(cluster)
    rt_calls, sim_calls = cluster.scheduler_calls, sim.sched_inputs
    n = len(WORKLOAD)
    # One call per wave on both sides, each seeing the whole wave in agent order ...
    expected = [[(a, turn) for a in range(n)] for turn in range(TURNS)]
    assert [[_runtime_key(i.request_id) for i in c[0]] for c in rt_calls] == expected
    assert [[sim.keys[int(i.request_id)] for i in c[0]] for c in sim_calls] == expected
    # ... and placing all of it.
    assert [len(c[2]) for c in rt_calls] == [n] * TURNS
    assert len(sim.decisions) == n * TURNS
    flat_sim = [(sim.keys[d[1]], d[2], d[3], d[4]) for d in sim.decisions]
    return Waves(
        infos_rt=[_infos(c[0], _runtime_key) for c in rt_calls],
        infos_sim=[_infos(c[0], lambda r: sim.keys[int(r)]) for c in sim_calls],
        views_rt=[c[1] for c in rt_calls],
        views_sim=[c[1] for c in sim_calls],
        decided_rt=[[(_runtime_key(d[0]), d[1], d[2], d[3]) for d in c[2]] for c in rt_calls],
        decided_sim=[flat_sim[k * n:(k + 1) * n] for k in range(TURNS)],
    )


def test_same_request_infos_every_wave(waves: Waves) -> None:
    """Prompt, cached (stored prefix) and decode-reserve tokens of every turn agree."""
    for wave, (rt, sim) in enumerate(zip(waves.infos_rt, waves.infos_sim, strict=True)):
        assert sim == rt, f"wave {wave}: RequestInfo (key, prompt, cached, reserve) differ"
    # Not vacuous: later turns read stored prefixes, and the reserves are block-rounded.
    assert all(cached > 0 for wave in waves.infos_rt[1:] for _, _, cached, _ in wave)
    assert any(reserve != WORKLOAD[a][t][1] for wave in waves.infos_rt
               for (a, t), _, _, reserve in wave)


def test_same_view_and_decisions_on_the_idle_cluster(waves: Waves) -> None:
    """Wave 0 meets both clusters idle: same view content and the same placements."""
    assert _content(waves.views_sim[0]) == _content(waves.views_rt[0])
    assert waves.decided_sim[0] == waves.decided_rt[0]
    assert len({de for _, _, de, _ in waves.decided_rt[0]}) == PD[1] * ENGINES_PER_NODE


def test_same_view_and_decisions_every_wave(waves: Waves) -> None:
    """Every wave: the same view (content and engine order) and the same placements. Between
    waves both clusters are idle again, so their views must agree exactly."""
    for wave in range(TURNS):
        assert waves.views_sim[wave].engines == waves.views_rt[wave].engines, f"wave {wave}"
        assert waves.views_sim[wave].nodes == waves.views_rt[wave].nodes, f"wave {wave}"
        assert waves.decided_sim[wave] == waves.decided_rt[wave], f"wave {wave}"


def test_wave_simulator_alone_is_deterministic() -> None:
    """The simulator half on its own (no processes): the same inputs twice give the same
    calls, and every wave is one call that places the whole wave."""
    cfg = SimConfig(model="ds-27b", pd=PD, block_tokens=BLOCK, alpha_tokens=1 << 40,
                    beta_tokens=1 << 40, de_kv_capacity_tokens=96 * BLOCK, timeline_bin_s=None,
                    log_decisions=True, record_scheduler_inputs=True)
    hardware = replace(load_hardware(None), gpus_per_node=ENGINES_PER_NODE)
    runs = []
    for _ in range(2):
        sim = WaveSimulator(cfg, [(0.0, t) for t in WORKLOAD], hardware=hardware)
        sim.run()
        assert [len(c[0]) for c in sim.sched_inputs] == [len(WORKLOAD)] * TURNS
        runs.append(([_infos(c[0], lambda r, s=sim: s.keys[int(r)]) for c in sim.sched_inputs],
                     [d[1:] for d in sim.decisions]))
    assert runs[0] == runs[1]
    infos: list[RequestInfo] = [i for c in sim.sched_inputs for i in c[0]]
    # Block-granular decode reservation: prompt + reserve is whole blocks.
    assert all((i.prompt_tokens + i.decode_reserve_tokens) % BLOCK == 0 for i in infos)
