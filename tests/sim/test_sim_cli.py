"""`dualpath simulate` end to end (small), the `--target sim` hook, and the sweep."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from dualpath.cli.main import main
from dualpath.sim.api import run_workload
from dualpath.workload.generator import generate
from dualpath.workload.workload import offline_workload


def test_simulate_writes_json_and_figures(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    rc = main(["simulate", "--model", "ds-27b", "--agents", "6", "--max-len", "32k",
               "--system", "basic,dualpath", "--json", str(out), "--plot", str(tmp_path / "fig")])
    assert rc == 0
    obj = json.loads(out.read_text())
    runs = {r["system"]: r for r in obj["runs"]}
    assert set(runs) == {"basic", "dualpath"}
    for r in runs.values():
        assert r["jct_s"] > 0 and r["unfinished_turns"] == 0
        assert r["pd"] == "1P1D" and r["num_gpus"] == 16
        for key in ("ttft_s_p50", "ttst_s_p99", "tpot_s_p99", "throughput_tok_s", "snic_max_over_avg",
                    "bytes_read_pe_path", "bytes_read_de_path", "cnic_utilization_mean",
                    "ttft_queue_s_mean", "ttft_read_s_mean", "ttft_prefill_s_mean"):
            assert key in r
    assert runs["basic"]["bytes_read_de_path"] == 0
    assert runs["basic"]["scheduler"]["placement"] == "round-robin"
    for name in ("jct_per_system.png", "nic_utilization.png", "ttft_breakdown.png"):
        assert (tmp_path / "fig" / name).stat().st_size > 1000


def test_user_errors_are_one_line(capsys: object) -> None:
    assert main(["simulate", "--system", "warp"]) == 2
    assert main(["simulate", "--pd", "2X4"]) == 2
    assert main(["simulate", "--mode", "online", "--agents", "2"]) == 2  # no --aps


def test_run_workload_hook_returns_turn_records() -> None:
    trajs = generate("32k", 3, 5)
    wl = offline_workload(trajs, 3)
    args = argparse.Namespace(system="dualpath", pd="1P1D", model="ds-27b", hardware=None,
                              seed=0, cutoff_s=None)
    recs = run_workload(wl, "offline", args)
    assert len(recs) == wl.num_turns
    assert {r.agent_id for r in recs} == {0, 1, 2}
    assert all(r.start_s <= r.first_token_s <= r.end_s for r in recs)


def test_sweep_over_snic_bandwidth(tmp_path: Path) -> None:
    out = tmp_path / "s.json"
    rc = main(["simulate", "--model", "ds-27b", "--agents", "4", "--max-len", "32k",
               "--system", "basic", "--sweep", "snic=100,400", "--json", str(out),
               "--plot", str(tmp_path)])
    assert rc == 0
    pts = json.loads(out.read_text())["sweep"]
    assert [p["value"] for p in pts] == ["100", "400"]
    # A slower storage NIC never makes the storage-bound basic rung faster.
    assert pts[0]["jct_s"] >= pts[1]["jct_s"]
    assert (tmp_path / "sweep.png").exists()


def test_sim_validate_fields(tmp_path: Path) -> None:
    out = tmp_path / "v.json"
    rc = main(["bench", "sim-validate", "--agents", "4,8", "--max-len", "32k", "--processes", "1",
               "--json", str(out), "--plot", str(tmp_path / "plots")])
    assert rc == 0
    obj = json.loads(out.read_text())
    per = obj["per_agent_count"]
    # Ratios at the largest count, the ladder averaged over the counts (as the paper does).
    assert obj["basic_over_dualpath_jct"] == per["8"]["basic_over_dualpath_jct"]
    for rung, v in obj["ablation_jct_reduction"].items():
        assert v == pytest.approx((per["4"]["ablation_jct_reduction"][rung]
                                   + per["8"]["ablation_jct_reduction"][rung]) / 2)
    for name in ("ladder_vs_paper.png", "jct_per_system_4.png", "jct_per_system_8.png"):
        assert (tmp_path / "plots" / name).stat().st_size > 0
    assert obj["cache_compute_gb_per_pflop"]["ds-660b"]["within_15pct"] is True
    assert obj["cache_compute_gb_per_pflop"]["qwen-32b"]["within_15pct"] is True
    assert set(obj["ablation_jct_reduction"]) == {"layerwise", "dualpath-rr", "dualpath"}
    assert obj["basic_over_dualpath_jct"] > 0 and obj["oracle_over_dualpath_jct"] > 0
    assert obj["split_over_dualpath_jct"] > 0
