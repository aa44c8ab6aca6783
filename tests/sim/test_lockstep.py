"""Expert-parallel groups: lockstep prefill forwards and decode steps, and scaling by
instances (per-GPU weights, KV room and step time independent of the cluster's size)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from dualpath.scheduler.charges import Charge, ChargePart
from dualpath.scheduler.types import ReadPlan
from dualpath.sim.api import simulate
from dualpath.sim.config import SimConfig
from dualpath.sim.simulator import Simulator
from dualpath.workload.generator import generate

ORACLE_27B = SimConfig(model="ds-27b", pd=(1, 1), system="oracle", timeline_bin_s=None)


def _first_tokens(cfg: SimConfig) -> dict[int, float]:
    # Two one-turn agents placed by one scheduler call onto two PEs of one node: a long
    # prompt (its forward takes ~0.7 s) and a short one (~10 ms on its own).
    sim = Simulator(cfg, [(0.0, [(30_000, 2)]), (0.0, [(200, 2)])])
    done = sim.run()
    assert len({r.pe.eid for r in done}) == 2
    return {r.agent: r.first_s for r in done}


def test_prefill_forward_waits_for_the_slowest_member() -> None:
    lockstep = _first_tokens(ORACLE_27B)  # one EP group of 8 GPUs
    assert lockstep[1] == pytest.approx(lockstep[0], rel=1e-12)
    independent = _first_tokens(replace(ORACLE_27B, ep_group_gpus=(1, 1)))
    assert independent[1] < 0.1 * independent[0]
    assert independent[0] == pytest.approx(lockstep[0], rel=1e-9)


def _decode_ends(cfg: SimConfig, contexts: tuple[int, int], gen: int) -> tuple[list[float], Simulator]:
    """Two requests joining two DEs of the first decode group at t = 0 (no prefill)."""
    sim = Simulator(cfg, [(0.0, [(c, gen)]) for c in contexts])
    des = [e for e in sim.engines if e.role == "decode"][:2]
    reqs = []
    for agent, de in enumerate(des):
        r = sim._new_turn(agent, 0, 0)
        r.pe, r.de = sim.engines[0], de
        r.charge = Charge.of(r.info, 0, de.eid, 0, de.node.nid,
                             ReadPlan(r.rid, "pe", 0, de.node.nid, 0, 0))
        r.charge.apply(sim, frozenset({ChargePart.DECODE}))
        reqs.append(r)
    for r in reqs:
        for t, handler, arg in sim.decode.join(0.0, r) or ():
            sim.loop.schedule(t, handler, arg)
    sim.loop.run()
    return [r.end_s for r in reqs], sim


def test_decode_steps_at_the_pace_of_the_slowest_member() -> None:
    contexts, gen = (100, 2_000_000), 50
    ends, sim = _decode_ends(ORACLE_27B, contexts, gen)
    g = sim.decode_groups[0]
    t = [sim.cost.decode_member_s(1, c, g.weight_bytes) for c in contexts]
    step = max(t) + sim.hw.decode_step_overhead_s
    assert t[1] > 1.5 * t[0]
    assert ends == pytest.approx([(gen - 1) * step] * 2, rel=1e-9)
    alone, sim1 = _decode_ends(replace(ORACLE_27B, ep_group_gpus=(8, 1)), contexts, gen)
    w1 = sim1.decode_groups[0].weight_bytes
    expect = [(gen - 1) * (sim1.cost.decode_member_s(1, c, w1) + sim1.hw.decode_step_overhead_s)
              for c in contexts]
    assert alone == pytest.approx(expect, rel=1e-9)
    assert alone[0] < alone[1]


def test_per_gpu_costs_do_not_depend_on_the_number_of_instances() -> None:
    def shape(pd: tuple[int, int]) -> tuple[object, ...]:
        sim = Simulator(SimConfig(model="ds-660b", pd=pd), [(0.0, [(100, 10)])])
        return (
            {len(g.members) for g in sim.prefill_groups}, {len(g.members) for g in sim.decode_groups},
            {g.weight_bytes for g in sim.prefill_groups + sim.decode_groups},  # type: ignore[operator]
            {g.coll_bytes_per_token for g in sim.prefill_groups},
            {(e.role, e.kv_hbm_bytes, e.free_kv_tokens) for e in sim.engines},
            sim.alpha, sim.beta,
        ), (len(sim.prefill_groups), len(sim.decode_groups))

    one, n1 = shape((2, 4))
    four, n4 = shape((8, 16))
    assert one == four
    assert (n1, n4) == ((1, 1), (4, 4))


def _replicated(k: int, cfg: SimConfig, agents_per_instance: int) -> float:
    trajs = generate("32k", agents_per_instance, 3)
    base = [(0.0, [(t.append_tokens, t.gen_tokens) for t in tr.turns][:40]) for tr in trajs]
    pd = (cfg.pd[0] * k, cfg.pd[1] * k)
    return simulate(replace(cfg, pd=pd), base * k).report["jct_s"]


@pytest.mark.parametrize("system", ["basic", "dualpath"])
def test_k_instances_with_k_times_the_agents_keep_the_jct(system: str) -> None:
    cfg = SimConfig(model="ds-27b", pd=(1, 1), system=system, timeline_bin_s=None)
    one = _replicated(1, cfg, 48)
    three = _replicated(3, cfg, 48)
    assert three == pytest.approx(one, rel=0.05)


@pytest.mark.slow
def test_paper_scale_replication_2p4d_x2048_vs_8p16d_x8192() -> None:
    cfg = SimConfig(model="ds-660b", pd=(2, 4), timeline_bin_s=None)
    trajs = generate("64k", 2048, 0)
    base = [(0.0, [(t.append_tokens, t.gen_tokens) for t in tr.turns]) for tr in trajs]
    one = simulate(cfg, base).report["jct_s"]
    four = simulate(replace(cfg, pd=(8, 16)), base * 4).report["jct_s"]
    assert four == pytest.approx(one, rel=0.05)
