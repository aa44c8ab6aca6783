"""Capacity search: bisection on a step function, and online probes on a target with a
known turn-rate limit."""

from __future__ import annotations

import pytest

from dualpath.bench import online
from dualpath.bench.capacity import find_capacity
from dualpath.core.errors import UserInputError
from dualpath.workload.trace_file import write_trace
from dualpath.workload.trajectory import Trajectory, Turn


@pytest.mark.parametrize("start", [0.1, 3.0, 50.0])
def test_search_converges_on_a_step(start: float) -> None:
    limit = 3.7

    def probe(aps: float) -> dict:
        return {"slo_attainment": 1.0 if aps <= limit else 0.2}

    capacity, probes = find_capacity(probe, start_aps=start, slo_target=0.9, max_probes=20,
                                     rel_tol=0.01)
    assert limit * 0.99 <= capacity <= limit
    assert len(probes) <= 20
    assert all(p.passed == (p.aps <= limit) for p in probes)


def test_search_respects_probe_budget_and_reports_zero() -> None:
    capacity, probes = find_capacity(lambda aps: {"slo_attainment": 0.0}, start_aps=1.0,
                                     slo_target=0.9, max_probes=3)
    assert capacity == 0.0 and len(probes) == 3
    assert [p.aps for p in probes] == [1.0, 0.5, 0.25]
    with pytest.raises(UserInputError):
        find_capacity(lambda aps: {}, start_aps=0.0, slo_target=0.9)


def test_online_capacity_on_a_queue_with_known_limit(tmp_path, queue_target, virtual_loop,
                                                     make_args, capsys) -> None:
    # One FIFO server, 0.1 s per turn, two turns per agent: at most 5 agents/s. Above the limit
    # the queue (and TTFT) grows without bound, so the SLO (TTFT <= 4 s) must fail there.
    trace = tmp_path / "t.jsonl"
    write_trace(trace, [Trajectory(f"a{i}", (Turn(100, 5), Turn(50, 5))) for i in range(10)])
    args = make_args(online, ["--trace", str(trace), "--find-capacity", "--aps", "1",
                              "--probe-duration", "400", "--probe-drain", "50", "--probes", "8",
                              "--no-progress"])
    limit = 5.0
    report = online.run(args, target=queue_target(service_s=0.1), loop_factory=virtual_loop)
    assert 0.8 * limit <= report["capacity_aps"] <= 1.02 * limit
    for p in report["probes"]:
        if p["aps"] > 1.1 * limit:
            assert not p["passed"]
        if p["aps"] < 0.7 * limit:
            assert p["passed"]
    assert len(report["probes"]) <= 8
    assert "capacity:" in capsys.readouterr().out
