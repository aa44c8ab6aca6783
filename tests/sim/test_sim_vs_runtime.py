"""`dualpath bench sim-vs-runtime`: the profiler's arithmetic, the simulated half on the
storage-bound scenario, and (slow) the whole benchmark against a live cluster."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
from profiled_hw import PROFILED_HW

from dualpath.bench import runtime_profile, sim_vs_runtime, storage_bound
from dualpath.core.errors import UserInputError
from dualpath.model.presets import preset_config
from dualpath.sim.cost import CostModel, attention_pairs
from dualpath.sim.hardware import hardware_from_dict
from dualpath.sim.model_cost import model_cost_of_config

HW = {**PROFILED_HW,
      "_cluster": {"block_tokens": 64, "de_kv_capacity_tokens": 349_504, "read_slots_per_node": 2}}


def _args(agents: int = 4, turns: int = 2) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    sim_vs_runtime.add_arguments(p)
    return p.parse_args(["--agents", str(agents), "--turns", str(turns)])


def test_profile_fit_and_slope_recover_known_values() -> None:
    rows = [(1.0, c, n) for c, n in ((0, 1024), (960, 64), (0, 4096), (4032, 64))]
    ys = [0.004 + 2e-6 * c + 3e-5 * n for _, c, n in rows]
    assert runtime_profile._fit(rows, ys) == pytest.approx([0.004, 2e-6, 3e-5], rel=1e-6)
    assert runtime_profile._slope([0.5 + 0.02 * i for i in (3, 0, 2, 1, 4)]) == pytest.approx(0.02)


def test_profile_fit_recovers_the_attention_pair_term_and_stays_non_negative() -> None:
    shapes = [(0, 1024), (960, 64), (0, 2048), (1984, 64), (0, 4096), (4032, 64)]
    rows = [(1.0, c, n, attention_pairs(c, n)) for c, n in shapes]
    truth = [0.003, 4e-6, 2e-5, 3.5e-8]
    ys = [sum(k * x for k, x in zip(truth, row, strict=True)) for row in rows]
    assert runtime_profile._fit(rows, ys) == pytest.approx(truth, rel=1e-6)
    # a column that would need a negative coefficient is dropped, the rest refitted
    ys_neg = [0.01 + 3e-5 * n - 1e-7 * c for _, c, n, _ in rows]
    fit = runtime_profile._fit([r[:3] for r in rows], ys_neg)
    assert min(fit) >= 0 and fit[1] == 0.0
    assert attention_pairs(0, 3) == 6 and attention_pairs(10, 2) == 23  # 11 + 12 keys


def test_profiled_prefill_charges_attention_per_chunk() -> None:
    """A profiled engine's forward costs Σ per chunk, so two chunks' pairs are not the pairs
    of their summed tokens (which would charge each chunk the other's context)."""
    hw = hardware_from_dict({**HW, "prefill_attention_pair_s": 1e-8})
    cost = CostModel(model_cost_of_config(preset_config("tiny", seed=0)), hw)
    one = cost.prefill_member_s(0.0, 0.0, 4032, 64)
    assert one == pytest.approx(4032 * 2e-6 + 64 * 2e-5 + attention_pairs(4032, 64) * 1e-8)
    assert cost.attention_time_s(4032, 64) == pytest.approx(one)
    two = cost.prefill_member_s(0.0, 0.0, 8064, 128, 2 * attention_pairs(4032, 64))
    assert two == pytest.approx(2 * one)
    assert cost.prefill_member_s(0.0, 0.0, 8064, 128) > two


def test_simulated_half_reads_what_the_warm_store_holds() -> None:
    _, measured = storage_bound.build_workload(_args())
    model = model_cost_of_config(preset_config("tiny", seed=0))
    report = sim_vs_runtime.simulate_system("basic", measured, HW, model, (1, 2))
    first_turns = [a.trajectory.turns[0].append_tokens for a in measured.agents]
    # Each first turn finds all but its last (partial or final) block: what the runtime's
    # lookup finds in the warm-up's store.
    first_hits = sum((p - 1) // 64 * 64 for p in first_turns)
    assert report["num_turns"] == 8 and report["unfinished_turns"] == 0
    assert report["cached_tokens_total"] >= first_hits > 0
    assert report["bytes_read_pe_path"] == pytest.approx(report["cached_tokens_total"] * 768)
    assert report["bytes_read_de_path"] == 0
    oracle = sim_vs_runtime.simulate_system("oracle", measured, HW, model, (1, 2))
    assert oracle["jct_s"] < report["jct_s"]
    assert oracle["bytes_read_pe_path"] == oracle["bytes_read_de_path"] == 0


def test_netns_testbed_is_refused_not_silently_run_locally() -> None:
    p = argparse.ArgumentParser()
    sim_vs_runtime.add_arguments(p)
    with pytest.raises(UserInputError, match="local"):
        sim_vs_runtime.run(p.parse_args(["--testbed", "netns"]))


def test_runtime_runs_must_be_positive() -> None:
    p = argparse.ArgumentParser()
    sim_vs_runtime.add_arguments(p)
    with pytest.raises(UserInputError, match="--runtime-runs"):
        sim_vs_runtime.run(p.parse_args(["--runtime-runs", "0"]))


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_benchmark_runs_on_a_live_cluster(tmp_path: Path) -> None:
    hw = tmp_path / "hw.json"
    hw.write_text(json.dumps(HW))
    out = tmp_path / "out.json"
    subprocess.run([sys.executable, "-m", "dualpath", "bench", "sim-vs-runtime", "--agents", "4",
                    "--turns", "2", "--systems", "basic,oracle", "--hardware", str(hw),
                    "--runtime-runs", "2",
                    "--work-dir", str(tmp_path / "work"), "--json", str(out)], check=True)
    result = json.loads(out.read_text())
    systems = result["systems"]
    assert set(systems) == {"basic", "oracle"}
    for r in systems.values():
        assert r["sim_over_runtime"] == pytest.approx(r["sim_jct_s"] / r["runtime_jct_s"])
        assert len(r["runtime_jct_s_runs"]) == 2
        assert r["runtime_jct_s"] == min(r["runtime_jct_s_runs"])  # the median of two: the lower
        assert r["runtime_cached_tokens_fraction"] == pytest.approx(r["sim_cached_tokens_fraction"],
                                                                    abs=0.02)
    assert result["max_abs_error"] == max(abs(r["sim_over_runtime"] - 1) for r in systems.values())


def test_decode_cpu_readings_wait_for_fresh_reports_and_take_off_idle(monkeypatch) -> None:
    import asyncio
    from types import SimpleNamespace

    class _Cluster:
        """Two decode engines and a prefill engine whose reports advance on every look."""

        def __init__(self) -> None:
            self.looks = 0
            self.books = SimpleNamespace(ledger=SimpleNamespace(engines={
                0: SimpleNamespace(engine_id=0, role="prefill"),
                1: SimpleNamespace(engine_id=1, role="decode"),
                2: SimpleNamespace(engine_id=2, role="decode")}))

        def counters(self) -> dict[int, dict[str, float]]:
            self.looks += 1
            fresh = 1.0 if self.looks > 3 else 0.0  # the new reports arrive on the 4th look
            return {0: {"process.cpu_s": 99.0, "process.clock_s": 9.0 + fresh},
                    1: {"process.cpu_s": 1.0 + fresh, "process.clock_s": 10.0 + fresh},
                    2: {"process.cpu_s": 2.0 + 2 * fresh, "process.clock_s": 10.0 + fresh}}

    cluster = _Cluster()
    cpu, clock = asyncio.run(runtime_profile._de_cpu(cluster))
    assert (cpu, clock) == (6.0, 22.0)  # the prefill engine is not counted
    assert runtime_profile._busy((3.0, 20.0), (cpu, clock), idle_rate=0.25) == pytest.approx(2.5)
    assert runtime_profile._busy((3.0, 20.0), (3.1, 22.0), idle_rate=0.25) == 0.0

    class _Silent(_Cluster):
        def counters(self) -> dict[int, dict[str, float]]:
            return {1: {"process.cpu_s": 1.0, "process.clock_s": 10.0}}

    monkeypatch.setattr(runtime_profile, "STATS_WAIT_S", 0.3)
    with pytest.raises(RuntimeError, match="sent no stats"):
        asyncio.run(runtime_profile._de_cpu(_Silent()))
