"""`dualpath bench sim-vs-runtime`: the simulator checked against real bytes.

The storage-bound scenario of `dualpath bench storage-bound` (1P2D local cluster, tiny model,
SNIC-limited, agents resumed mid-trajectory from a warm store) runs on the live runtime and
in the simulator set up as that cluster: the hardware file of this machine's runtime
(`benchmarks/sim/local-runtime.json`: the configured NIC rates, buffers, block size and the
engines' speeds profiled by `runtime_profile`), the runtime model's cost preset and the
same workload, each agent's first turn finding its warm context stored.

`--hardware FILE` uses a saved hardware file; without it the engines are profiled first
(a minute of calibration workloads on an oracle cluster) and the file is written to
`--save-hardware` (default: the work directory). JSON: `systems.<name>.{runtime_jct_s,
sim_jct_s, sim_over_runtime, sim_jct_s_without}`, `max_abs_error` (max |sim_over_runtime -
1|), `hardware`, `scenario`. `sim_jct_s_without.<mechanism>`: the simulated JCT with one
modelled mechanism of the shared host switched off (`ABLATIONS`), to show what each explains.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from dualpath.bench import storage_bound
from dualpath.bench.report import format_table, machine_info
from dualpath.core.errors import UserInputError
from dualpath.workload.workload import Workload


def add_arguments(p: argparse.ArgumentParser) -> None:
    storage_bound.add_arguments(p)
    p.add_argument("--runtime-runs", type=int, default=1, metavar="N",
                   help="run each system on the live runtime N times and compare the simulator "
                        "with the run of median JCT (the runtime's JCT moves with the shared "
                        "machine's load; the simulator's does not) [1]")
    p.add_argument("--hardware", default=None, metavar="FILE",
                   help="the runtime's hardware file (default: profile the engines now)")
    p.add_argument("--save-hardware", default=None, metavar="PATH",
                   help="where to write the profiled hardware file (default: the work dir)")


def sim_agents(workload: Workload) -> list[tuple[Any, ...]]:
    """Simulator agents of the measured workload; each first turn's prompt is stored (the
    warm-up persisted it), so the simulator finds the same prefix the runtime does."""
    out = []
    for a in workload.agents:
        turns = [(t.append_tokens, t.gen_tokens) for t in a.trajectory.turns]
        out.append((float(a.arrival_s), turns, turns[0][0]))
    return out


def simulate_system(system: str, workload: Workload, hw_raw: dict[str, Any], model: Any,
                    pd: tuple[int, int]) -> dict[str, Any]:
    from dualpath.sim.api import simulate
    from dualpath.sim.config import SimConfig
    from dualpath.sim.hardware import hardware_from_dict

    hw = hardware_from_dict(hw_raw)
    cluster = hw_raw.get("_cluster", {})
    cfg = SimConfig(model="ds-27b", system=system, pd=pd, timeline_bin_s=None,
                    block_tokens=int(cluster.get("block_tokens", 64)),
                    read_slots_per_node=int(cluster.get("read_slots_per_node", 2)),
                    de_kv_capacity_tokens=cluster.get("de_kv_capacity_tokens"),
                    block_header_bytes=int(cluster.get("block_header_bytes", 0)),
                    # The runtime schedules on every arrival / completion, not on a timer.
                    sched_interval_s=0.0, ep_group_gpus=(1, 1), prefill_batch_requests=1)
    return simulate(cfg, sim_agents(workload), hardware=hw, model=model).report


# Modelled mechanisms of a shared host, each switched off alone (`ablations`): the hardware
# fields (or `_cluster` entries) set to 0.
ABLATIONS: dict[str, tuple[str, ...]] = {
    "block_header": ("_cluster.block_header_bytes",),
    "frontend_cpu": ("frontend_cpu_s_per_token", "frontend_cpu_s_per_turn"),
    "read_send_cpu": ("engine_read_cpu_s_per_byte", "engine_send_cpu_s_per_byte"),
    "de_kv_cpu": ("de_kv_cpu_s_per_byte", "de_persist_cpu_s_per_byte"),
    "host_cores": ("host_cores",),
}


def ablations(system: str, workload: Workload, hw_raw: dict[str, Any], model: Any,
              pd: tuple[int, int]) -> dict[str, float]:
    """The simulated JCT with each of `ABLATIONS` switched off alone (the rest as profiled)."""
    out = {}
    for name, fields in ABLATIONS.items():
        hw = {**hw_raw, "_cluster": dict(hw_raw.get("_cluster", {}))}
        for f in fields:
            if f.startswith("_cluster."):
                hw["_cluster"][f.removeprefix("_cluster.")] = 0
            else:
                hw[f] = 0.0
        out[name] = simulate_system(system, workload, hw, model, pd)["jct_s"]
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    from dualpath.core.config import ClusterConfig
    from dualpath.model.presets import preset_config
    from dualpath.sim.model_cost import model_cost_of_config
    from dualpath.workload.metrics import build_report

    if getattr(args, "testbed", "local") != "local":
        # The flag comes with storage-bound's arguments; the simulated half models the
        # software-shaped local cluster only.
        raise UserInputError("sim-vs-runtime runs the local cluster only (--testbed local)")
    systems, snic = storage_bound.systems_and_snic(args)
    runs = getattr(args, "runtime_runs", 1)
    if runs < 1:
        raise UserInputError(f"--runtime-runs must be >= 1, got {runs}")
    load_start = list(os.getloadavg())
    warm_wl, measured_wl = storage_bound.build_workload(args)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="dualpath-sim-vs-runtime-"))
    work.mkdir(parents=True, exist_ok=True)
    base = ClusterConfig(model=args.model, prefill_nodes=1, decode_nodes=2, engines_per_node=1,
                         decode_kv_bytes=256 << 20, pe_buffer_bytes=256 << 20,
                         de_buffer_bytes=256 << 20, store_path=str(work / "warm"),
                         snic_bytes_s=snic, cnic_bytes_s=snic * args.cnic_factor)
    model_config = preset_config(args.model, seed=base.model_seed)
    model = model_cost_of_config(model_config)
    if args.hardware:
        hw_raw = json.loads(Path(args.hardware).read_text())
    else:
        from dualpath.bench.runtime_profile import profile_hardware

        hw_raw = profile_hardware(base, model_config.kv_bytes_per_token)
        out = Path(args.save_hardware or work / "local-runtime.json")
        out.write_text(json.dumps(hw_raw, indent=2) + "\n")
        print(f"wrote the profiled hardware file {out}", file=sys.stderr)
    print(f"warm-up: {args.agents} agents' contexts into {work / 'warm'}", file=sys.stderr)
    shutil.rmtree(work / "warm", ignore_errors=True)
    asyncio.run(storage_bound._run_cluster(replace(base, system="dualpath", snic_bytes_s=None,
                                                   cnic_bytes_s=None), warm_wl))
    results: dict[str, Any] = {}
    for system in systems:
        reports = []
        for r in range(runs):
            store = work / f"run-{system}"
            shutil.rmtree(store, ignore_errors=True)
            shutil.copytree(work / "warm", store)
            print(f"runtime: {system}" + (f" (run {r + 1} of {runs})" if runs > 1 else ""),
                  file=sys.stderr)
            rt, _ = asyncio.run(storage_bound._run_cluster(
                replace(base, system=system, store_path=str(store)), measured_wl))
            shutil.rmtree(store, ignore_errors=True)
            reports.append(build_report(rt.records, mode="offline",
                                        unfinished_turns=rt.unfinished_turns))
        reports.sort(key=lambda rep: rep["jct_s"])
        rt_report = reports[(len(reports) - 1) // 2]  # the median run (the lower of two)
        sim_report = simulate_system(system, measured_wl, hw_raw, model, (1, 2))
        results[system] = {
            "runtime_jct_s": rt_report["jct_s"], "sim_jct_s": sim_report["jct_s"],
            "sim_over_runtime": sim_report["jct_s"] / rt_report["jct_s"],
            "runtime_jct_s_runs": [rep["jct_s"] for rep in reports],
            "runtime_ttft_s_p50": rt_report["ttft_s_p50"], "sim_ttft_s_p50": sim_report["ttft_s_p50"],
            "runtime_tpot_s_p50": rt_report["tpot_s_p50"], "sim_tpot_s_p50": sim_report["tpot_s_p50"],
            "runtime_cached_tokens_fraction": rt_report["cached_tokens_fraction"],
            "sim_cached_tokens_fraction": sim_report["cached_tokens_fraction"],
            "sim_bytes_read_pe_path": sim_report["bytes_read_pe_path"],
            "sim_bytes_read_de_path": sim_report["bytes_read_de_path"],
            "sim_jct_s_without": ablations(system, measured_wl, hw_raw, model, (1, 2)),
        }
    shutil.rmtree(work / "warm", ignore_errors=True)
    out_json: dict[str, Any] = {
        "benchmark": "sim-vs-runtime",
        "scenario": {"agents": args.agents, "turns": args.turns, "max_len": args.max_len,
                     "scale": args.scale, "model": args.model, "layout": "1P2D",
                     "snic_bytes_s": snic, "cnic_bytes_s": base.cnic_bytes_s, "seed": args.seed,
                     "runtime_runs": runs},
        "systems": results,
        "max_abs_error": max(abs(r["sim_over_runtime"] - 1) for r in results.values()),
        "hardware": hw_raw,
        # The runtime shares this machine's cores with whatever else runs: its JCTs (not
        # the simulator's) move with the load.
        "load_average_start_end": [load_start, list(os.getloadavg())],
        "machine": machine_info(),
    }
    print(format_table(["system", "runtime JCT s", "sim JCT s", "sim/runtime", "TTFT p50 rt/sim",
                        "TPOT p50 rt/sim"],
                       [[s, r["runtime_jct_s"], r["sim_jct_s"], r["sim_over_runtime"],
                         f"{r['runtime_ttft_s_p50']:.3f}/{r['sim_ttft_s_p50']:.3f}",
                         f"{r['runtime_tpot_s_p50']:.4f}/{r['sim_tpot_s_p50']:.4f}"]
                        for s, r in results.items()]))
    print(f"max |sim/runtime - 1| = {out_json['max_abs_error']:.3f}")
    if args.plot:
        out_json["plot"] = str(_plot(results, Path(args.plot)))
    return out_json


def _plot(results: dict[str, Any], out_dir: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    names = list(results)
    x = range(len(names))
    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    ax.bar([i - 0.2 for i in x], [results[n]["runtime_jct_s"] for n in names], 0.4, label="runtime")
    ax.bar([i + 0.2 for i in x], [results[n]["sim_jct_s"] for n in names], 0.4, label="simulator")
    ax.set_xticks(list(x), names)
    ax.set_ylabel("offline JCT (s)")
    ax.set_title("storage-bound 1P2D: live runtime vs simulator")
    ax.legend()
    fig.tight_layout()
    path = out_dir / "sim_vs_runtime.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
