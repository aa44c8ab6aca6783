"""`dualpath bench sim-vs-runtime`: the profiler's arithmetic, the simulated half on the
storage-bound scenario, and (slow) the whole benchmark against a live cluster."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

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


def test_profile_readings_wait_for_fresh_reports_and_take_off_idle(monkeypatch) -> None:
    import asyncio
    from dataclasses import replace
    from types import SimpleNamespace

    from dualpath.workload.metrics import TurnRecord

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
            return {0: {"process.cpu_s": 99.0, "process.clock_s": 9.0 + fresh,
                        "bytes_read_pe_path": 500.0, "cnic.tx.kv.bytes": 700.0},
                    1: {"process.cpu_s": 1.0 + fresh, "process.clock_s": 10.0 + fresh,
                        "decode.steps": 4.0, "decode.batch_sum": 8.0, "decode.ctx_sum": 900.0,
                        "bytes_read_de_path": 30.0, "cnic.tx.kv.bytes": 40.0},
                    2: {"process.cpu_s": 2.0 + 2 * fresh, "process.clock_s": 10.0 + fresh,
                        "decode.steps": 6.0, "decode.batch_sum": 6.0, "decode.ctx_sum": 100.0}}

    r = asyncio.run(runtime_profile._reading(_Cluster()))
    # The decode engines summed (the prefill engine apart), the front end's own CPU.
    assert (r.cpu_s, r.clock_s, r.steps, r.batch_sum, r.ctx_sum) == (6.0, 22.0, 10.0, 14.0, 1000.0)
    assert (r.pe_cpu_s, r.pe_clock_s, r.pe_read_bytes, r.pe_sent_bytes) == (99.0, 10.0, 500.0, 700.0)
    assert (r.de_read_bytes, r.de_sent_bytes) == (30.0, 40.0) and r.fe_cpu_s > 0
    before = replace(r, cpu_s=3.0, clock_s=20.0, steps=4.0, batch_sum=4.0, ctx_sum=200.0)
    # 200-token prompt, 10 answer tokens, 128 cached: KV of 209 tokens, 3 whole blocks of
    # which 2 were stored: one block (64 tokens) persisted.
    rec = TurnRecord(0, 0, 0.0, 0.1, 0.2, 0.5, 200, 10, 128)
    row = runtime_profile._cpu_row([rec], before, r, idle_rate=0.25, block=64)
    assert row == pytest.approx((200.0, 64.0, 6.0, 10.0, 800.0, 2.5))
    idle = runtime_profile._cpu_row([rec], before, replace(r, cpu_s=3.1), idle_rate=0.25, block=64)
    assert idle[-1] == 0.0

    class _Silent(_Cluster):
        def counters(self) -> dict[int, dict[str, float]]:
            return {1: {"process.cpu_s": 1.0, "process.clock_s": 10.0}}

    monkeypatch.setattr(runtime_profile, "STATS_WAIT_S", 0.3)
    with pytest.raises(RuntimeError, match="sent no stats"):
        asyncio.run(runtime_profile._reading(_Silent()))


def test_profile_hardware_recovers_every_cpu_rate_from_synthetic_runs(monkeypatch, tmp_path) -> None:
    """The chain of fits: prefill service times, then the prefill engine's CPU beyond its
    compute (reads, sends), then the decode engines' CPU with their own reads and sends
    taken off at the prefill engine's rates, and the front end's."""
    from dualpath.core.config import ClusterConfig

    pre = (0.004, 5e-7, 6e-6, 3e-8)
    read_cpu, send_cpu = 2e-9, 3e-9
    de = (4e-4, 1e-4, 1.4e-3, 2e-4, 1.7e-7)  # into, persisted, step, Σ batch, Σ context
    fe = (2.5e-3, 2e-4)

    def compute(c: float, n: float) -> float:
        return pre[0] + c * pre[1] + n * pre[2] + attention_pairs(c, n) * pre[3]

    shapes = [(0.0, 1024.0), (960.0, 64.0), (0.0, 2048.0), (1984.0, 64.0), (0.0, 4096.0),
              (4032.0, 64.0)]
    pe_rows, cpu_rows, de_io, fe_rows = [], [], [], []
    for i in range(8):
        turns = [shapes[(i + j) % 6] for j in range(3 + i % 3)]
        read, sent = 1e6 * (i % 4), 2e6 + 5e5 * i * i
        pe_rows.append((turns, read, sent, sum(compute(c, n) for c, n in turns)
                        + read * read_cpu + sent * send_cpu))
        cols = (1e4 * (i + 1), 3e3 * (i % 3), 50.0 * (i % 4) + 20 * i * i, 60.0 * (i + 1) + 90 * (i % 2),
                2e4 * (i + 1) ** 1.5)
        de_read, de_sent = 4e5 * (i % 2), 3e5 * (i % 3)
        cpu_rows.append((*cols, sum(k * x for k, x in zip(de, cols, strict=True))
                         + de_read * read_cpu + de_sent * send_cpu))
        de_io.append((de_read, de_sent))
        fe_rows.append((10.0 + i, 100.0 + 37 * i * i, fe[0] * (10 + i) + fe[1] * (100 + 37 * i * i)))

    async def fake(config: Any) -> dict[str, Any]:
        return {"prefill_samples": [(c, n, compute(c, n)) for c, n in shapes],
                "decode_tpot": [(2.0, 2048.0, 1.0, 0.002)], "turn_gap_s": 1e-4,
                "cpu_rows": cpu_rows, "fe_rows": fe_rows, "pe_rows": pe_rows, "de_io": de_io,
                "de_idle_cpu_rate": 0.02, "fe_idle_cpu_rate": 0.01, "pe_idle_cpu_rate": 0.01}

    monkeypatch.setattr(runtime_profile, "_measure", fake)
    base = ClusterConfig(model="tiny", prefill_nodes=1, decode_nodes=2, store_path=str(tmp_path))
    hw = runtime_profile.profile_hardware(base, kv_bytes_per_token=768)
    got = {k: hw[k] for k in ("prefill_batch_overhead_s", "prefill_context_token_s",
                              "prefill_new_token_s", "prefill_attention_pair_s")}
    assert list(got.values()) == pytest.approx(pre, rel=1e-5)
    assert (hw["engine_read_cpu_s_per_byte"], hw["engine_send_cpu_s_per_byte"]) == pytest.approx(
        (read_cpu, send_cpu), rel=1e-5)
    assert (hw["de_kv_cpu_s_per_byte"] * 768, hw["de_persist_cpu_s_per_byte"] * 768,
            hw["decode_step_overhead_s"], hw["decode_seq_s"],
            hw["decode_context_token_s"]) == pytest.approx(de, rel=1e-5)
    assert (hw["frontend_cpu_s_per_turn"], hw["frontend_cpu_s_per_token"]) == pytest.approx(fe, rel=1e-6)
    hardware_from_dict(hw)  # a valid hardware file
