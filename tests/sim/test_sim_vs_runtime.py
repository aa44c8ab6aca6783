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

from dualpath.bench import runtime_fit, runtime_profile, sim_vs_runtime, storage_bound
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
    assert runtime_fit._fit(rows, ys) == pytest.approx([0.004, 2e-6, 3e-5], rel=1e-6)
    assert runtime_fit._slope([0.5 + 0.02 * i for i in (3, 0, 2, 1, 4)]) == pytest.approx(0.02)


def test_relative_fit_weighs_every_calibration_point_alike() -> None:
    # A step costs 4 ms at batch 1 but the big runs say 1 ms + 1 ms a sequence: an absolute
    # fit follows the big runs (thousands of steps) and misses the small one by far more.
    rows = [(100.0, 100.0), (2000.0, 12000.0), (2000.0, 10000.0)]
    ys = [0.4, 2000 * 0.001 + 12000 * 0.001, 2000 * 0.001 + 10000 * 0.001]

    def worst(coef: list[float]) -> float:
        return max(abs(sum(c * x for c, x in zip(coef, r, strict=True)) / y - 1)
                   for r, y in zip(rows, ys, strict=True))

    absolute, relative = runtime_fit._fit(rows, ys), runtime_fit._fit(rows, ys, relative=True)
    assert worst(relative) < worst(absolute) / 2
    with pytest.raises(ValueError, match="> 0"):
        runtime_fit._fit(rows, [0.0, 1.0, 1.0], relative=True)


def test_profile_fit_recovers_the_attention_pair_term_and_stays_non_negative() -> None:
    shapes = [(0, 1024), (960, 64), (0, 2048), (1984, 64), (0, 4096), (4032, 64)]
    rows = [(1.0, c, n, attention_pairs(c, n)) for c, n in shapes]
    truth = [0.003, 4e-6, 2e-5, 3.5e-8]
    ys = [sum(k * x for k, x in zip(truth, row, strict=True)) for row in rows]
    assert runtime_fit._fit(rows, ys) == pytest.approx(truth, rel=1e-6)
    # a column that would need a negative coefficient is dropped, the rest refitted
    ys_neg = [0.01 + 3e-5 * n - 1e-7 * c for _, c, n, _ in rows]
    fit = runtime_fit._fit([r[:3] for r in rows], ys_neg)
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
    from types import SimpleNamespace

    from dualpath.workload.metrics import TurnRecord

    class _Cluster:
        """Two decode engines and a prefill engine whose reports advance on every look."""

        def __init__(self, scale: float = 1.0) -> None:
            self.looks = 0
            self.scale = scale
            self.books = SimpleNamespace(ledger=SimpleNamespace(engines={
                0: SimpleNamespace(engine_id=0, role="prefill"),
                1: SimpleNamespace(engine_id=1, role="decode"),
                2: SimpleNamespace(engine_id=2, role="decode")}))

        def counters(self) -> dict[int, dict[str, float]]:
            self.looks += 1
            fresh = 1.0 if self.looks > 3 else 0.0  # the new reports arrive on the 4th look
            k = self.scale
            return {0: {"process.cpu_s": 99.0 * k, "process.clock_s": 9.0 * k + fresh,
                        "bytes_read_pe_path": 500.0 * k, "cnic.tx.kv.bytes": 700.0 * k,
                        "prefill.forwards": 3.0 * k, "prefill.cpu_s": 50.0 * k,
                        "read.cpu_s": 4.0 * k},
                    1: {"process.cpu_s": 1.0 * k + fresh, "process.clock_s": 10.0 * k + fresh,
                        "decode.steps": 4.0 * k, "decode.batch_sum": 8.0 * k,
                        "decode.ctx_sum": 900.0 * k, "decode.cpu_s": 0.5 * k,
                        "bytes_read_de_path": 30.0 * k, "cnic.tx.kv.bytes": 40.0 * k},
                    2: {"process.cpu_s": 2.0 * k + 2 * fresh, "process.clock_s": 10.0 * k + fresh,
                        "decode.steps": 6.0 * k, "decode.batch_sum": 6.0 * k,
                        "decode.ctx_sum": 100.0 * k}}

    r = asyncio.run(runtime_profile._reading(_Cluster()))
    # Each role's engines summed, the front end's own CPU.
    assert (r.cpu["de"], r.clock["de"]) == (6.0, 22.0) and (r.cpu["pe"], r.clock["pe"]) == (99.0, 10.0)
    assert r.counters["de"] == {"steps": 10.0, "batch": 14.0, "ctx": 1000.0, "decode_cpu": 0.5,
                                "forwards": 0.0, "forward_cpu": 0.0, "read_cpu": 0.0,
                                "sent": 40.0, "read": 30.0}
    assert r.counters["pe"]["forwards"] == 3.0 and r.counters["pe"]["read"] == 500.0
    assert r.cpu["fe"] > 0
    later = asyncio.run(runtime_profile._reading(_Cluster(scale=2.0)))
    # 200-token prompt, 10 answer tokens, 128 cached: KV of 209 tokens, 3 whole blocks of
    # which 2 were stored: one block (64 tokens) persisted.
    rec = TurnRecord(0, 0, 0.0, 0.1, 0.2, 0.5, 200, 10, 128)
    row = runtime_profile._run_row("decode", [rec], r, later, {"pe": 0.5, "de": 0.1, "fe": 0.0}, 64)
    assert row["de_busy"] == pytest.approx(3.0 - 0.1 * 20.0)  # CPU 3 more, clocks 20 more
    assert row["pe_busy"] == pytest.approx(99.0 - 0.5 * 9.0)
    assert (row["de_steps"], row["de_batch"], row["de_ctx"], row["de_decode_cpu"]) == (10.0, 14.0, 1000.0, 0.5)
    assert (row["pe_forwards"], row["pe_forward_cpu"], row["pe_read_cpu"]) == (3.0, 50.0, 4.0)
    assert (row["into"], row["persisted"], row["turns"]) == (200.0, 64.0, [(128.0, 72.0)])
    assert (row["fe_turns"], row["fe_tokens"]) == (1.0, 10.0)
    idle = runtime_profile._run_row("decode", [rec], r, later, {"pe": 99.0, "de": 9.0, "fe": 0.0}, 64)
    assert idle["de_busy"] == idle["pe_busy"] == 0.0

    class _Silent(_Cluster):
        def counters(self) -> dict[int, dict[str, float]]:
            return {1: {"process.cpu_s": 1.0, "process.clock_s": 10.0}}

    monkeypatch.setattr(runtime_profile, "STATS_WAIT_S", 0.3)
    with pytest.raises(RuntimeError, match="sent no stats"):
        asyncio.run(runtime_profile._reading(_Silent()))


def _synthetic_runs() -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Runs whose CPU follows known rates exactly (columns not collinear)."""
    truth = {"pre": (0.004, 5e-7, 6e-6, 3e-8), "read": 2e-9, "send": 3e-9,
             "dec": (1.4e-3, 2e-4, 1.7e-7), "rest": (4e-4, 1e-4, 5e-5), "fe": (2.5e-3, 2e-4)}
    shapes = [(0.0, 1024.0), (960.0, 64.0), (0.0, 2048.0), (1984.0, 64.0), (0.0, 4096.0),
              (4032.0, 64.0)]
    runs = []
    for i in range(10):
        kind = "prefill" if i < 6 else "decode"
        turns = [shapes[(i + j) % 6] for j in range(3 + i % 3)]
        pre_cols = (float(len(turns)), sum(c for c, _ in turns), sum(n for _, n in turns),
                    sum(attention_pairs(c, n) for c, n in turns))
        forward_cpu = sum(k * x for k, x in zip(truth["pre"], pre_cols, strict=True))
        pe_read, pe_sent, de_read, de_sent = 1e6 * (i % 4), 2e6 + 5e5 * i * i, 4e5 * (i % 2), 3e5 * (i % 3)
        steps, batch, ctx = (0.0, 0.0, 0.0) if kind == "prefill" else (
            50.0 * (i % 4) + 20 * i * i, 60.0 * (i + 1) + 90 * (i % 2), 2e4 * (i + 1) ** 1.5)
        decode_cpu = truth["dec"][0] * steps + truth["dec"][1] * batch + truth["dec"][2] * ctx
        into, persisted = 1e4 * (i + 1), 3e3 * (i % 3) + 100 * i * i
        rest = truth["rest"][0] * into + truth["rest"][1] * persisted + truth["rest"][2] * batch
        turns_n, tokens = 10.0 + i, 100.0 + 37 * i * i
        runs.append({
            "kind": kind, "turns": turns, "pe_forwards": float(len(turns)), "pe_forward_cpu": forward_cpu,
            "pe_read": pe_read, "pe_read_cpu": pe_read * truth["read"], "pe_sent": pe_sent,
            "pe_busy": forward_cpu + pe_read * truth["read"] + pe_sent * truth["send"],
            "de_read": de_read, "de_read_cpu": de_read * truth["read"], "de_sent": de_sent,
            "de_steps": steps, "de_batch": batch, "de_ctx": ctx, "de_decode_cpu": decode_cpu,
            "de_busy": decode_cpu + rest + de_read * truth["read"] + de_sent * truth["send"],
            "into": into, "persisted": persisted, "fe_turns": turns_n, "fe_tokens": tokens,
            "fe_busy": truth["fe"][0] * turns_n + truth["fe"][1] * tokens})
    return runs, truth


def test_profile_fits_recover_every_cpu_rate_from_synthetic_runs() -> None:
    """Each rate where it was measured: forwards, reads (a ratio), sends (the prefill
    engine's remainder), decode steps, the decode engines' remainder with their own reads and
    sends taken off at those rates, the front end."""
    runs, truth = _synthetic_runs()
    f = runtime_fit.fit_cpu(runs)
    assert f["prefill"] == pytest.approx(truth["pre"], rel=1e-5)
    assert f["read_cpu_s_per_byte"] == pytest.approx(truth["read"])
    assert f["send_cpu_s_per_byte"] == pytest.approx(truth["send"], rel=1e-6)
    step, seq, ctx = f["decode"]
    assert (step, f["decode_step_seq_s"], ctx) == pytest.approx(truth["dec"], rel=1e-5)
    # A step's per-sequence cost includes the other threads' CPU per streamed token.
    assert seq == pytest.approx(truth["dec"][1] + truth["rest"][2], rel=1e-5)
    assert (f["kv_into_s_per_token"], f["kv_persist_s_per_token"],
            f["decode_other_per_token_s"]) == pytest.approx(truth["rest"], rel=1e-5)
    assert f["frontend"] == pytest.approx(truth["fe"], rel=1e-6)
    assert f["prefill_forwards_match"]
    assert max(abs(e) for errs in f["errors"].values() for e in errs) < 1e-6


def test_profile_hardware_writes_a_valid_file_from_the_fits(monkeypatch, tmp_path) -> None:
    from dualpath.core.config import ClusterConfig

    runs, truth = _synthetic_runs()

    async def fake(config: Any) -> dict[str, Any]:
        assert config.system == "oracle" and config.read_path == "pe"
        assert config.prefill_quota_s == runtime_profile.PROFILE_QUOTA_S  # no chunked forwards
        return {"prefill_samples": [(0.0, 1024.0, 0.03)], "decode_tpot": [(2.0, 2048.0, 1.0, 0.002)],
                "turn_gap_s": 1e-4, "runs": runs, "idle_rates": {"pe": 0.01, "de": 0.02, "fe": 0.0}}

    monkeypatch.setattr(runtime_profile, "_measure", fake)
    base = ClusterConfig(model="tiny", prefill_nodes=1, decode_nodes=2, store_path=str(tmp_path))
    hw = runtime_profile.profile_hardware(base, kv_bytes_per_token=768)
    assert hw["prefill_new_token_s"] == pytest.approx(truth["pre"][2], rel=1e-5)
    assert hw["de_kv_cpu_s_per_byte"] * 768 == pytest.approx(truth["rest"][0], rel=1e-5)
    assert hw["engine_send_cpu_s_per_byte"] == pytest.approx(truth["send"], rel=1e-6)
    assert hw["frontend_cpu_s_per_token"] == pytest.approx(truth["fe"][1], rel=1e-6)
    assert hw["_cluster"]["block_header_bytes"] == 4096
    # The runs are kept: the same fits again from the file alone.
    assert runtime_fit.fit_cpu(json.loads(json.dumps(hw["_profile_runs"])))["frontend"] == \
        pytest.approx(truth["fe"], rel=1e-6)
    hardware_from_dict(hw)  # a valid hardware file


def test_ablations_switch_off_one_mechanism_each() -> None:
    _, measured = storage_bound.build_workload(_args())
    model = model_cost_of_config(preset_config("tiny", seed=0))
    hw = {**HW, "host_cores": 2.0, "frontend_cpu_s_per_token": 3e-4,
          "_cluster": {**HW["_cluster"], "block_header_bytes": 4096}}
    full = sim_vs_runtime.simulate_system("basic", measured, hw, model, (1, 2))["jct_s"]
    without = sim_vs_runtime.ablations("basic", measured, hw, model, (1, 2))
    assert set(without) == set(sim_vs_runtime.ABLATIONS)
    # Storage-bound: the headers' bytes on the SNICs cost time; the CPU fields left at 0
    # switch nothing off.
    assert without["block_header"] < full
    assert without["read_send_cpu"] == without["de_kv_cpu"] == full
    no_cores = {**hw, "host_cores": 0.0}
    assert without["host_cores"] == sim_vs_runtime.simulate_system(
        "basic", measured, no_cores, model, (1, 2))["jct_s"]
    assert hw["_cluster"]["block_header_bytes"] == 4096 and hw["host_cores"] == 2.0  # not mutated
