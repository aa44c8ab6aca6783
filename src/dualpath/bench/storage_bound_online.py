"""`dualpath bench storage-bound [--online]`: the storage-bound local cluster, offline (JCT,
`storage_bound`) or online (capacity at SLO, this module).

Online. Agents of the storage-bound scenario (64K-style trajectories scaled by `--scale`,
resumed mid-trajectory from a warm, byte-identical store) arrive as a seeded Poisson process
and each runs its `--turns` turns back to back. For each system the capacity search of
`bench.capacity` finds the highest arrival rate (APS) whose SLO attainment (turns meeting
TTFT and TPOT, late turns counted as misses) is at least `--slo-target`; every probe is a
fresh cluster (`storage_bound_probes`).

SLOs scaled to this machine: before any probe each system runs `--calibration-agents` agents
one at a time (an unloaded cluster); SLO = `--slo-factor` x the larger of the systems'
median unloaded TTFT, and the same factor x the larger median TPOT. One pair of SLOs holds
for every system; taking the larger median means no system fails only because another set
its objective. `--slo-ttft-s` and `--slo-tpot-s` fix them instead.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from dualpath.bench import storage_bound
from dualpath.bench.capacity import find_capacity
from dualpath.bench.report import format_table, machine_info
from dualpath.bench.storage_bound_probes import ProbeRunner, Scenario, load_avg_1m, unloaded_slo
from dualpath.core.errors import UserInputError
from dualpath.core.systems import SYSTEM_NAMES
from dualpath.core.units import parse_bandwidth
from dualpath.workload.metrics import SLO, TurnRecord

ONLINE_SYSTEMS = ("basic", "dualpath-rr", "dualpath")
PROBE_FIELDS = ("aps", "passed", "slo_attainment", "num_agents", "num_turns", "unfinished_turns",
                "ttft_s_p50", "ttft_s_p90", "ttft_s_p99", "ttst_s_p50", "tpot_s_p50",
                "tpot_s_p90", "tpot_s_p99", "throughput_tok_s", "cached_tokens_fraction",
                "bytes_read_pe_path", "bytes_read_de_path", "length_mismatches", "load_avg_1m")


def add_arguments(p: argparse.ArgumentParser) -> None:
    storage_bound.add_arguments(p)
    p.set_defaults(systems=None)  # offline: all five; online: ONLINE_SYSTEMS
    o = p.add_argument_group("online capacity (--online)")
    o.add_argument("--online", action="store_true",
                   help="Poisson agent arrivals and a capacity search per system instead of the "
                   "offline JCT (systems default to basic,dualpath-rr,dualpath; --agents and "
                   "--no-unbound are not used)")
    o.add_argument("--aps", type=float, default=0.5, help="first probe's arrivals/s (0.5)")
    o.add_argument("--aps-step", type=float, default=2.0,
                   help="multiply / divide the rate by this until bracketed (2)")
    o.add_argument("--probes", type=int, default=6, help="probes per system (6)")
    o.add_argument("--rel-tol", type=float, default=0.05,
                   help="stop when the bracket is narrower than this fraction (0.05)")
    o.add_argument("--probe-duration", type=float, default=45.0,
                   help="arrival window of each probe, s (45)")
    o.add_argument("--probe-drain", type=float, default=15.0,
                   help="each probe is cut off this long after its window, s (15)")
    o.add_argument("--arrival-seed", type=int, default=0, help="Poisson arrivals' seed (0)")
    o.add_argument("--slo-target", type=float, default=0.9,
                   help="SLO attainment a probe must reach to pass (0.9)")
    o.add_argument("--slo-factor", type=float, default=4.0,
                   help="SLO = this x the unloaded median TTFT / TPOT (4)")
    o.add_argument("--warm-agents", type=int, default=32,
                   help="agents whose contexts are persisted before the first run; more are "
                   "added when a probe needs them (32)")
    o.add_argument("--calibration-agents", type=int, default=4,
                   help="agents run one at a time per system to measure unloaded latency (4)")
    o.add_argument("--slo-ttft-s", type=float, default=None,
                   help="fix the TTFT SLO (with --slo-tpot-s; skips the calibration)")
    o.add_argument("--slo-tpot-s", type=float, default=None, help="fix the TPOT SLO")


def run(args: argparse.Namespace) -> dict[str, Any]:
    if not args.online:
        if args.systems is None:
            args.systems = ",".join(SYSTEM_NAMES)
        return storage_bound.run(args)
    return run_online(args)


def _systems(args: argparse.Namespace) -> list[str]:
    raw = args.systems if args.systems is not None else ",".join(ONLINE_SYSTEMS)
    systems = [s.strip() for s in raw.split(",") if s.strip()]
    for s in systems:
        if s not in SYSTEM_NAMES:
            raise UserInputError(f"unknown system {s!r}; choose from {', '.join(SYSTEM_NAMES)}")
    if not systems:
        raise UserInputError("--systems names no system")
    return systems


def _scenario(args: argparse.Namespace) -> Scenario:
    snic = parse_bandwidth(args.snic_bandwidth)
    if snic is None:
        raise UserInputError("--snic-bandwidth must be finite for a storage-bound scenario")
    if args.turns < 1:
        raise UserInputError("--turns must be >= 1")
    if not (args.probe_duration > 0 and args.probe_drain >= 0):
        raise UserInputError("--probe-duration must be > 0 and --probe-drain >= 0")
    if (args.slo_ttft_s is None) != (args.slo_tpot_s is None):
        raise UserInputError("give both --slo-ttft-s and --slo-tpot-s, or neither")
    if not args.aps > 0 or not args.aps_step > 1 or args.probes < 1:
        raise UserInputError("--aps must be > 0, --aps-step > 1 and --probes >= 1")
    if not 0 < args.slo_target <= 1 or not args.slo_factor > 0:
        raise UserInputError("--slo-target must be in (0, 1] and --slo-factor > 0")
    if args.calibration_agents < 1 or args.warm_agents < 0:
        raise UserInputError("--calibration-agents must be >= 1 and --warm-agents >= 0")
    return Scenario(model=args.model, max_len=args.max_len, scale=args.scale, turns=args.turns,
                    seed=args.seed, snic_bytes_s=snic, cnic_bytes_s=snic * args.cnic_factor,
                    arrival_seed=args.arrival_seed, probe_duration_s=args.probe_duration,
                    probe_drain_s=args.probe_drain)


def run_online(args: argparse.Namespace) -> dict[str, Any]:
    systems = _systems(args)
    scenario = _scenario(args)
    t0 = time.monotonic()
    load_start = load_avg_1m()
    own_dir = args.work_dir is None
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="dualpath-storage-bound-online-"))
    work.mkdir(parents=True, exist_ok=True)
    runner = ProbeRunner(scenario, work)
    try:
        runner.warm.ensure(args.warm_agents)
        slo, derivation = _slo(args, runner, systems)
        print(f"SLO: TTFT <= {slo.ttft_s:.3g} s, TPOT <= {slo.tpot_s * 1e3:.3g} ms "
              f"(attainment >= {args.slo_target})", file=sys.stderr)
        results: dict[str, Any] = {}
        for system in systems:
            def probe(aps: float, system: str = system) -> dict[str, Any]:
                return runner.probe(system, aps, slo)

            capacity, probes = find_capacity(
                probe, start_aps=args.aps,
                slo_target=args.slo_target, max_probes=args.probes, rel_tol=args.rel_tol,
                step=args.aps_step)
            results[system] = {
                "capacity_aps": capacity,
                "capacity_bracketed": any(p.passed for p in probes)
                and any(not p.passed for p in probes),
                "probes": [{k: (p.passed if k == "passed" else p.report.get(k))
                            for k in PROBE_FIELDS} for p in probes],
            }
    finally:
        shutil.rmtree(work if own_dir else work / "warm", ignore_errors=True)
    out = _result(args, scenario, systems, results, slo, derivation)
    out["wall_s"] = time.monotonic() - t0
    out["machine"] = {**machine_info(), "load_avg_1m_start": load_start,
                      "load_avg_1m_end": load_avg_1m()}
    _print(out)
    if args.plot:
        path = plot_attainment(out, Path(args.plot))
        out["plot"] = str(path)
        print(f"wrote {path}")
    return out


def _slo(args: argparse.Namespace, runner: ProbeRunner,
         systems: list[str]) -> tuple[SLO, dict[str, Any]]:
    if args.slo_ttft_s is not None:
        return SLO(args.slo_ttft_s, args.slo_tpot_s), {"rule": "given (--slo-ttft-s, --slo-tpot-s)"}
    calibration: dict[str, list[TurnRecord]] = {}
    for system in systems:
        calibration[system] = runner.calibrate(system, args.calibration_agents)
    return unloaded_slo(calibration, args.slo_factor)


def _ratio(results: dict[str, Any], a: str, b: str) -> float | None:
    if a in results and b in results and results[b]["capacity_aps"] > 0:
        return float(results[a]["capacity_aps"] / results[b]["capacity_aps"])
    return None


def _result(args: argparse.Namespace, scenario: Scenario, systems: list[str],
            results: dict[str, Any], slo: SLO, derivation: dict[str, Any]) -> dict[str, Any]:
    return {
        "mode": "online-capacity",
        "scenario": {**scenario.as_dict(), "systems": systems, "start_aps": args.aps,
                     "aps_step": args.aps_step, "max_probes": args.probes,
                     "rel_tol": args.rel_tol, "slo_target": args.slo_target},
        "slo_ttft_s": slo.ttft_s,
        "slo_tpot_s": slo.tpot_s,
        "slo_target": args.slo_target,
        "slo_derivation": derivation,
        "systems": results,
        "capacity_ratio_dualpath_over_basic": _ratio(results, "dualpath", "basic"),
        "capacity_ratio_dualpath_rr_over_basic": _ratio(results, "dualpath-rr", "basic"),
        "capacity_ratio_limit_storage_bound": 3.0,
    }


def _print(out: dict[str, Any]) -> None:
    rows = []
    for system, r in out["systems"].items():
        for p in r["probes"]:
            rows.append((system, p["aps"], p["num_agents"], p["slo_attainment"],
                         "pass" if p["passed"] else "fail", p["ttft_s_p50"], p["ttft_s_p99"],
                         p["tpot_s_p50"] * 1e3))
    print(format_table(["system", "APS", "agents", "attainment", "result", "TTFT p50 (s)",
                        "TTFT p99 (s)", "TPOT p50 (ms)"], rows))
    print(f"SLO: TTFT <= {out['slo_ttft_s']:.3g} s, TPOT <= {out['slo_tpot_s'] * 1e3:.3g} ms, "
          f"attainment >= {out['slo_target']}")
    for system, r in out["systems"].items():
        note = "" if r["capacity_bracketed"] else " (not bracketed)"
        print(f"capacity {system}: {r['capacity_aps']:.4g} APS{note}")
    ratio = out["capacity_ratio_dualpath_over_basic"]
    if ratio is not None:
        print(f"dualpath over basic: {ratio:.2f}x capacity (storage-bound limit 3x)")


def plot_attainment(out: dict[str, Any], out_dir: Path) -> Path:
    """slo_attainment_vs_aps.png: every probe's attainment per system, the target, the
    capacities."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for i, (system, r) in enumerate(out["systems"].items()):
        pts = sorted((p["aps"], p["slo_attainment"]) for p in r["probes"]
                     if not math.isnan(p["slo_attainment"]))
        color = f"C{i}"
        ax.plot([a for a, _ in pts], [v for _, v in pts], "o-", color=color,
                label=f"{system} (capacity {r['capacity_aps']:.3g} APS)")
        if r["capacity_aps"] > 0:
            ax.axvline(r["capacity_aps"], color=color, ls=":", lw=1)
    ax.axhline(out["slo_target"], color="grey", ls="--", lw=1, label="target attainment")
    ax.set_xlabel("agent arrival rate (APS)")
    ax.set_ylabel("SLO attainment")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"storage-bound 1P2D, TTFT <= {out['slo_ttft_s']:.2g} s, "
                 f"TPOT <= {out['slo_tpot_s'] * 1e3:.2g} ms")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out_dir / "slo_attainment_vs_aps.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
