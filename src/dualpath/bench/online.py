"""`dualpath bench online`: agents arrive as a Poisson process at `--aps`; reports TTFT,
TTST, TPOT percentiles and SLO attainment; `--find-capacity` searches the highest APS that
holds the SLO (each probe a bounded online run)."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable
from typing import Any

from dualpath.bench.capacity import find_capacity
from dualpath.bench.execute import execute
from dualpath.bench.offline import summary_table
from dualpath.bench.report import format_table, machine_info
from dualpath.bench.target import Target
from dualpath.bench.workload_args import (
    add_workload_arguments,
    slo_from_args,
    trajectories_from_args,
)
from dualpath.core.errors import UserInputError
from dualpath.workload.workload import online_workload

DEFAULT_AGENTS = 8


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_workload_arguments(parser)
    o = parser.add_argument_group("online")
    o.add_argument("--aps", type=float, default=None,
                   help="agent arrivals per second (Poisson); with --find-capacity the first probe")
    o.add_argument("--arrivals", choices=["poisson", "trace"], default="poisson",
                   help="poisson at --aps, or the trace's own arrival times")
    o.add_argument("--duration", type=float, default=None,
                   help="arrival window in seconds (default: until --agents have arrived)")
    o.add_argument("--max-time", type=float, default=None,
                   help="cut the run off after this many seconds (in-flight turns past the TTFT "
                   "objective count as misses)")
    c = parser.add_argument_group("capacity search")
    c.add_argument("--find-capacity", action="store_true",
                   help="search the highest APS whose SLO attainment >= --slo-target")
    c.add_argument("--slo-target", type=float, default=0.9,
                   help="attainment a probe must reach to pass (default 0.9)")
    c.add_argument("--probes", type=int, default=8, help="at most this many probes (default 8)")
    c.add_argument("--probe-duration", type=float, default=60.0,
                   help="arrival window of each probe, s (default 60)")
    c.add_argument("--probe-drain", type=float, default=30.0,
                   help="each probe is cut off this long after its arrival window, s (default 30)")


def _check(args: argparse.Namespace) -> None:
    for name in ("duration", "max_time", "probe_duration"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise UserInputError(f"--{name.replace('_', '-')} must be > 0, got {value}")
    if args.probe_drain < 0:
        raise UserInputError(f"--probe-drain must be >= 0, got {args.probe_drain}")
    if args.find_capacity and args.arrivals == "trace":
        raise UserInputError("--find-capacity varies the Poisson rate; it cannot use --arrivals trace")
    if args.arrivals == "poisson" and args.aps is None:
        raise UserInputError("online mode needs --aps (agents per second; the first probe with "
                             "--find-capacity)")
    if args.aps is not None and args.aps <= 0:
        raise UserInputError(f"--aps must be > 0, got {args.aps}")


def run(
    args: argparse.Namespace,
    *,
    target: Target | None = None,
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
) -> dict[str, Any]:
    _check(args)
    trajs, info = trajectories_from_args(args, DEFAULT_AGENTS)
    slo = slo_from_args(args)
    if args.find_capacity:
        return _capacity(args, trajs, info, slo, target, loop_factory)
    n = args.agents
    if n is None and args.duration is None:
        n = DEFAULT_AGENTS if not args.trace else len(trajs)
    workload = online_workload(trajs, aps=args.aps, seed=args.seed, num_agents=n,
                               duration_s=args.duration,
                               use_trace_arrivals=args.arrivals == "trace")
    records, report = execute(workload, args, mode="online", slo=slo, cutoff_s=args.max_time,
                              target=target, loop_factory=loop_factory, desc="online")
    report["aps"] = args.aps
    report["trace"] = info
    report["machine"] = machine_info()
    print(summary_table(report))
    if args.plot:
        from dualpath.bench.plots import write_plots

        written = write_plots(records, args.plot, title=f"online, {args.aps} APS")
        report["plots"] = [str(p) for p in written]
        print(f"wrote {len(written)} plots to {args.plot}")
    return report


def _capacity(args: argparse.Namespace, trajs: Any, info: dict[str, Any], slo: Any,
              target: Target | None,
              loop_factory: Callable[[], asyncio.AbstractEventLoop] | None) -> dict[str, Any]:
    def probe(aps: float) -> dict[str, Any]:
        workload = online_workload(trajs, aps=aps, seed=args.seed, duration_s=args.probe_duration)
        if not workload.agents:
            raise UserInputError(f"no agent arrives within --probe-duration at {aps:.4g} APS")
        _, report = execute(workload, args, mode="online", slo=slo,
                            cutoff_s=args.probe_duration + args.probe_drain, target=target,
                            loop_factory=loop_factory, desc=f"probe {aps:.3g} APS")
        return report

    capacity, probes = find_capacity(probe, start_aps=args.aps, slo_target=args.slo_target,
                                     max_probes=args.probes)
    rows = [(p.aps, p.slo_attainment, "pass" if p.passed else "fail",
             p.report["ttft_s_p90"], p.report["tpot_s_p90"] * 1e3) for p in probes]
    print(format_table(["APS", "SLO attainment", "result", "TTFT p90 (s)", "TPOT p90 (ms)"], rows))
    print(f"capacity: {capacity:.4g} APS (SLO attainment >= {args.slo_target})")
    keep = ("num_agents", "num_turns", "unfinished_turns", "slo_attainment", "ttft_s_p50",
            "ttft_s_p90", "ttft_s_p99", "ttst_s_p90", "tpot_s_p50", "tpot_s_p90", "tpot_s_p99",
            "throughput_tok_s")
    return {
        "mode": "capacity",
        "capacity_aps": capacity,
        "slo_target": args.slo_target,
        "slo_ttft_s": slo.ttft_s,
        "slo_tpot_s": slo.tpot_s,
        "probe_duration_s": args.probe_duration,
        "probe_drain_s": args.probe_drain,
        "probes": [{"aps": p.aps, "passed": p.passed, **{k: p.report.get(k) for k in keep}}
                   for p in probes],
        "trace": info,
        "machine": machine_info(),
    }
