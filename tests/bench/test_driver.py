"""The driver against in-process fake targets, in virtual time."""

from __future__ import annotations

import itertools
import random
import statistics

import pytest

from dualpath.bench.driver import run_workload
from dualpath.workload.metrics import SLO
from dualpath.workload.tokens import TokenSource
from dualpath.workload.trajectory import Trajectory, Turn
from dualpath.workload.workload import offline_workload, online_workload, poisson_arrivals


def trajs(n: int = 4, turns: int = 5) -> list[Trajectory]:
    rng = random.Random(7)
    return [Trajectory(f"t{i}", tuple(Turn(rng.randint(5, 40), rng.randint(2, 30))
                                       for _ in range(turns))) for i in range(n)]


def test_offline_turns_run_in_order_and_back_to_back(fixed_target, virtual_loop) -> None:
    target = fixed_target(ttft_s=0.5, tpot_s=0.01)
    wl = offline_workload(trajs(4, 5))
    result = run_workload(target, wl, loop_factory=virtual_loop)
    assert len(result.records) == 20 and result.unfinished_turns == 0
    for agent in range(4):
        mine = sorted((x for x in target.log if x["agent"] == agent), key=lambda x: x["turn"])
        assert [x["turn"] for x in mine] == list(range(5))
        for prev, cur in itertools.pairwise(mine):
            assert cur["start"] >= prev["end"]  # no turn starts before its predecessor ended
        assert mine[0]["start"] == pytest.approx(0.0)  # offline: everyone starts at once
    by_key = {(r.agent_id, r.turn_index): r for r in result.records}
    for a in wl.agents:
        prompt = 0
        for i, t in enumerate(a.trajectory.turns):
            r = by_key[(a.agent_id, i)]
            prompt += t.append_tokens
            assert r.generated_tokens == t.gen_tokens  # forced length
            assert r.prompt_tokens == prompt
            assert r.ttft_s == pytest.approx(0.5)
            prompt += t.gen_tokens
    assert result.length_mismatches == 0


def test_length_mismatch_is_counted(fixed_target, virtual_loop) -> None:
    result = run_workload(fixed_target(short_by=1), offline_workload(trajs(2, 3)),
                          loop_factory=virtual_loop)
    assert result.length_mismatches == 6


def test_prompts_grow_by_real_generated_ids(fixed_target, virtual_loop) -> None:
    target = fixed_target(needs_ids=True)
    wl = offline_workload(trajs(2, 4))
    tokens = TokenSource(1000, forbidden_ids=range(10), seed=1)
    run_workload(target, wl, tokens=tokens, loop_factory=virtual_loop)
    for agent in range(2):
        mine = sorted((x for x in target.log if x["agent"] == agent), key=lambda x: x["turn"])
        traj = wl.agents[agent].trajectory
        for prev, cur in itertools.pairwise(mine):
            expected_head = tuple(prev["prompt"]) + prev["gen"]
            assert cur["prompt"][: len(expected_head)] == expected_head
            assert len(cur["prompt"]) == len(expected_head) + traj.turns[cur["turn"]].append_tokens
        assert all(10 <= t < 1000 for x in mine for t in x["prompt"][: traj.turns[0].append_tokens])
        assert len(mine[-1]["prompt"]) == mine[-1]["prompt_tokens"]


def test_poisson_arrival_rate_within_tolerance() -> None:
    times = poisson_arrivals(5.0, random.Random(11), count=20_000)
    gaps = [b - a for a, b in zip([0.0, *times], times, strict=False)]
    assert statistics.fmean(gaps) == pytest.approx(1 / 5.0, rel=0.03)
    # exponential gaps: the standard deviation equals the mean
    assert statistics.pstdev(gaps) == pytest.approx(1 / 5.0, rel=0.05)
    window = poisson_arrivals(5.0, random.Random(12), duration_s=2000.0)
    assert len(window) / 2000.0 == pytest.approx(5.0, rel=0.03)
    assert max(window) <= 2000.0


def test_online_agents_start_at_their_arrival(fixed_target, virtual_loop) -> None:
    target = fixed_target(ttft_s=0.1, tpot_s=0.001)
    wl = online_workload(trajs(3, 2), aps=2.0, seed=5, num_agents=30)
    assert len(wl.agents) == 30  # trajectories reused cyclically
    result = run_workload(target, wl, loop_factory=virtual_loop)
    firsts = {r.agent_id: r.start_s for r in result.records if r.turn_index == 0}
    for a in wl.agents:
        assert firsts[a.agent_id] == pytest.approx(a.arrival_s)


def test_cutoff_counts_only_late_in_flight_turns(fixed_target, virtual_loop) -> None:
    # Every turn takes 10 s to its first token; cut off at 25 s: two turns done per agent,
    # the third has been waiting 5 s (> TTFT objective 4 s) -> one miss per agent.
    target = fixed_target(ttft_s=10.0, tpot_s=0.0)
    wl = offline_workload([Trajectory("x", tuple(Turn(3, 1) for _ in range(10)))], 3)
    result = run_workload(target, wl, cutoff_s=25.0, slo=SLO(4.0, 0.05), loop_factory=virtual_loop)
    assert len(result.records) == 6
    assert result.unfinished_turns == 3
    early = run_workload(fixed_target(ttft_s=10.0, tpot_s=0.0), wl, cutoff_s=22.0,
                         slo=SLO(4.0, 0.05), loop_factory=virtual_loop)
    assert early.unfinished_turns == 0  # in flight for only 2 s: not a miss yet


def test_apply_cutoff_matches_the_driver_rule() -> None:
    from dualpath.bench.sim_hook import apply_cutoff
    from dualpath.workload.metrics import TurnRecord

    def r(start: float, end: float) -> TurnRecord:
        return TurnRecord(0, 0, start, start + 0.1, None, end, 10, 1)

    records = [r(0, 5), r(5, 30), r(18, 40), r(25, 26)]
    kept, unfinished = apply_cutoff(records, 20.0, SLO(4.0, 0.05))
    assert kept == [records[0]]
    assert unfinished == 1  # started at 5 (15 s in flight); the one from 18 is only 2 s in
    assert apply_cutoff(records, None, SLO()) == (records, 0)
