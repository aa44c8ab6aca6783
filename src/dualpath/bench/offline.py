"""`dualpath bench offline`: the RL-rollout workload (N agents start at once, each replays its
turns back to back); reports JCT, token throughput and per-turn TTFT / TTST / TPOT."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable
from typing import Any

from dualpath.bench.execute import execute
from dualpath.bench.report import format_table, machine_info
from dualpath.bench.target import Target
from dualpath.bench.workload_args import (
    add_workload_arguments,
    slo_from_args,
    trajectories_from_args,
)
from dualpath.workload.workload import offline_workload

DEFAULT_AGENTS = 8


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_workload_arguments(parser)


def summary_table(report: dict[str, Any]) -> str:
    rows = [
        ("agents / turns", f"{report['num_agents']} / {report['num_turns']}"),
        ("JCT (s)", report["jct_s"]),
        ("agent JCT p50 / p99 (s)", f"{report['agent_jct_s_p50']:.4g} / {report['agent_jct_s_p99']:.4g}"),
        ("throughput (tok/s, prompt+gen)", report["throughput_tok_s"]),
        ("generated tok/s", report["gen_throughput_tok_s"]),
        ("TTFT p50 / p90 / p99 (s)", _three(report, "ttft_s")),
        ("TTST p50 / p90 / p99 (s)", _three(report, "ttst_s")),
        ("TPOT p50 / p90 / p99 (ms)", _three(report, "tpot_s", 1e3)),
        ("SLO attainment", report["slo_attainment"]),
        ("cached tokens fraction", report["cached_tokens_fraction"]),
    ]
    return format_table(["metric", "value"], rows)


def _three(report: dict[str, Any], prefix: str, scale: float = 1.0) -> str:
    return " / ".join(f"{report[f'{prefix}_p{q}'] * scale:.4g}" for q in (50, 90, 99))


def run(
    args: argparse.Namespace,
    *,
    target: Target | None = None,
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
) -> dict[str, Any]:
    trajs, info = trajectories_from_args(args, DEFAULT_AGENTS)
    n = args.agents if args.agents is not None else (DEFAULT_AGENTS if not args.trace else None)
    workload = offline_workload(trajs, n)
    slo = slo_from_args(args)
    records, report = execute(workload, args, mode="offline", slo=slo, target=target,
                              loop_factory=loop_factory, desc="offline")
    report["trace"] = info
    report["machine"] = machine_info()
    print(summary_table(report))
    if args.plot:
        from dualpath.bench.plots import write_plots

        written = write_plots(records, args.plot, title="offline")
        report["plots"] = [str(p) for p in written]
        print(f"wrote {len(written)} plots to {args.plot}")
    return report
