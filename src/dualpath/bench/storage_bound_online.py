"""`dualpath bench storage-bound [--online]`: the storage-bound local cluster, offline (JCT,
`storage_bound`) or online (capacity at SLO, this module).

Online. Agents of the storage-bound scenario (64K-style trajectories scaled by `--scale`,
resumed mid-trajectory from a warm, byte-identical store) arrive as a seeded Poisson process
and each runs its `--turns` turns back to back. For each system the capacity search of
`bench.capacity` finds the highest arrival rate (APS) whose SLO attainment (turns meeting
TTFT and TPOT, late turns counted as misses) is at least `--slo-target`, up to `--max-aps`.
Every system keeps one cluster for the whole run and the searches advance in lock-step, one
probe per system per round, so outside load falls on all of them alike; each probe starts on
an idle cluster and reads exactly what it would on a fresh one (`storage_bound_probes`).

SLOs scaled to this machine: before any probe each system runs `--calibration-agents` agents
one at a time (an unloaded cluster; agent i on every system before agent i + 1); SLO =
`--slo-factor` x the larger of the systems' median unloaded TTFT, and the same factor (or
`--slo-tpot-factor`) x the larger median TPOT. One pair of SLOs holds for every system;
taking the larger median means no system fails only because another set its objective. `--slo-ttft-s` and `--slo-tpot-s`
fix them instead.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from dualpath.bench import storage_bound
from dualpath.bench.capacity import CapacitySearch
from dualpath.bench.report import format_table, machine_info
from dualpath.bench.storage_bound_probes import (
    WARM_DONE,
    LiveSystem,
    Scenario,
    load_avg_1m,
    unloaded_slo,
    warm_store,
)
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
    o.add_argument("--max-aps", type=float, default=4.0,
                   help="highest rate probed; the store is warmed for the agents it brings (4)")
    o.add_argument("--probes", type=int, default=4, help="probes per system (4)")
    o.add_argument("--rel-tol", type=float, default=0.05,
                   help="stop when the bracket is narrower than this fraction (0.05)")
    o.add_argument("--probe-duration", type=float, default=20.0,
                   help="arrival window of each probe, s (20)")
    o.add_argument("--probe-drain", type=float, default=10.0,
                   help="each probe is cut off this long after its window, s (10)")
    o.add_argument("--min-agents", type=int, default=4,
                   help="a probe whose window holds fewer arrivals takes the first this many (4)")
    o.add_argument("--arrival-seed", type=int, default=0, help="Poisson arrivals' seed (0)")
    o.add_argument("--slo-target", type=float, default=0.9,
                   help="SLO attainment a probe must reach to pass (0.9)")
    o.add_argument("--slo-factor", type=float, default=4.0,
                   help="SLO = this x the unloaded median TTFT / TPOT (4)")
    o.add_argument("--slo-tpot-factor", type=float, default=None,
                   help="TPOT SLO = this x the unloaded median TPOT (default: --slo-factor); "
                        "TPOTs of short outputs are noisier than TTFTs")
    o.add_argument("--calibration-agents", type=int, default=2,
                   help="agents run one at a time per system to measure unloaded latency (2)")
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
    if args.slo_tpot_factor is not None and not args.slo_tpot_factor > 0:
        raise UserInputError(f"--slo-tpot-factor must be > 0, got {args.slo_tpot_factor}")
    if args.min_agents < 1:
        raise UserInputError("--min-agents must be >= 1")
    if args.calibration_agents < 1 or not args.max_aps >= args.aps:
        raise UserInputError("--calibration-agents must be >= 1 and --max-aps >= --aps")
    return Scenario(model=args.model, max_len=args.max_len, scale=args.scale, turns=args.turns,
                    seed=args.seed, snic_bytes_s=snic, cnic_bytes_s=snic * args.cnic_factor,
                    arrival_seed=args.arrival_seed, probe_duration_s=args.probe_duration,
                    probe_drain_s=args.probe_drain, min_agents=args.min_agents)


def run_online(args: argparse.Namespace) -> dict[str, Any]:
    if getattr(args, "testbed", "local") != "local":
        raise UserInputError("--online runs on the local testbed only (drop --testbed)")
    systems = _systems(args)
    scenario = _scenario(args)
    t0 = time.monotonic()
    load_start = load_avg_1m()
    own_dir = args.work_dir is None
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="dualpath-storage-bound-online-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        slo, derivation, searches = asyncio.run(_search(args, scenario, systems, work))
    finally:
        shutil.rmtree(work if own_dir else work / "stores", ignore_errors=True)
    results = {s: {"capacity_aps": search.capacity_aps, "capacity_bracketed": search.bracketed,
                   "probes": [{k: (p.passed if k == "passed" else p.report.get(k))
                               for k in PROBE_FIELDS} for p in search.probes]}
               for s, search in searches.items()}
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


async def _search(args: argparse.Namespace, scenario: Scenario, systems: list[str],
                  work: Path) -> tuple[SLO, dict[str, Any], dict[str, CapacitySearch]]:
    """Warm the store, start every system's cluster, calibrate, then step the searches in
    lock-step: each round probes every unfinished system once, in a rotating order, so load
    from outside the benchmark falls on all systems alike."""
    stores = work / "stores"
    n_warm = max(scenario.agents_at(args.max_aps), args.calibration_agents)
    warm, measured = scenario.trajectories(n_warm)
    warm_root = work / f"warm-{scenario.warm_key(n_warm)}"
    if args.work_dir is not None and (warm_root / WARM_DONE).exists():
        print(f"warm-up: reusing {warm_root}", file=sys.stderr)
    else:
        await warm_store(scenario, warm_root, warm)
        (warm_root / WARM_DONE).write_text(json.dumps(scenario.as_dict()))
    lives = []
    for system in systems:
        shutil.rmtree(stores / system, ignore_errors=True)
        shutil.copytree(warm_root, stores / system)
        lives.append(LiveSystem(scenario, system, stores / system, measured))
    print(f"starting {len(lives)} clusters ({', '.join(systems)})", file=sys.stderr)
    try:
        await asyncio.gather(*(live.start() for live in lives))
        if args.slo_ttft_s is not None:
            slo = SLO(args.slo_ttft_s, args.slo_tpot_s)
            derivation: dict[str, Any] = {"rule": "given (--slo-ttft-s, --slo-tpot-s)"}
        else:
            calibration: dict[str, list[TurnRecord]] = {live.system: [] for live in lives}
            for agent in range(args.calibration_agents):  # interleaved, as the probes are
                for live in lives:
                    calibration[live.system].extend(await live.calibrate(agent))
            slo, derivation = unloaded_slo(calibration, args.slo_factor, args.slo_tpot_factor)
        print(f"SLO: TTFT <= {slo.ttft_s:.3g} s, TPOT <= {slo.tpot_s * 1e3:.3g} ms "
              f"(attainment >= {args.slo_target})", file=sys.stderr)
        searches = {s: CapacitySearch(start_aps=args.aps, slo_target=args.slo_target,
                                      max_probes=args.probes, rel_tol=args.rel_tol,
                                      step=args.aps_step, max_aps=args.max_aps)
                    for s in systems}
        for round_index in range(args.probes):
            order = lives[round_index % len(lives):] + lives[:round_index % len(lives)]
            todo = [(live, aps) for live in order
                    if (aps := searches[live.system].next_aps()) is not None]
            if not todo:
                break
            print(f"round {round_index + 1}/{args.probes}: "
                  + ", ".join(f"{live.system} {aps:.3g} APS" for live, aps in todo),
                  file=sys.stderr)
            for live, aps in todo:
                searches[live.system].record(aps, await live.probe(aps, slo))
    finally:
        await asyncio.gather(*(live.shutdown() for live in lives), return_exceptions=True)
    return slo, derivation, searches


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
    """storage_bound_online_attainment.png: every probe's attainment per system, the target, the
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
    path = out_dir / "storage_bound_online_attainment.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
