"""`dualpath simulate`: the discrete-event model of a PD cluster (DESIGN.md section 5.2).

Runs one or more `--system` rungs (comma list or `all`) on the same agents and prints a
table; `--json PATH` writes the report(s), `--plot DIR` the figures, `--sweep KEY=V1,V2`
runs a grid over all cores.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from dualpath.core.errors import UserInputError
from dualpath.core.systems import SYSTEM_NAMES

logger = logging.getLogger(__name__)


def register(sub: Any) -> None:
    p = sub.add_parser("simulate", help="simulate a PD cluster serving agentic workloads",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", default="offline", choices=["offline", "online"],
                   help="offline: every agent starts at 0 (JCT); online: Poisson arrivals at --aps")
    p.add_argument("--system", default="dualpath",
                   help=f"rung(s): {', '.join(SYSTEM_NAMES)}, a comma list, or 'all' (default dualpath)")
    p.add_argument("--model", default="ds-660b", help="model preset: ds-660b, ds-27b, qwen-32b")
    p.add_argument("--pd", default=None, help="layout xPyD (default per model: ds-660b 2P4D, "
                   "qwen-32b 1P2D, ds-27b 1P1D)")
    p.add_argument("--agents", type=int, default=512, help="number of agents (default 512)")
    p.add_argument("--max-len", default="64k", help="generated trace: 32k, 48k or 64k")
    p.add_argument("--trace", metavar="FILE", help="trace file instead of a generated one")
    p.add_argument("--aps", type=float, default=None, help="online: agents per second")
    p.add_argument("--hardware", metavar="FILE", default=None,
                   help="hardware preset name or JSON file (default hopper-testbed)")
    p.add_argument("--seed", type=int, default=0, help="trace and arrival seed")
    p.add_argument("--read-path", default="auto", choices=["auto", "pe", "de"],
                   help="force the read side (auto = the scheduler's choice)")
    p.add_argument("--split-reads", action="store_true",
                   help="beyond the paper: split one request's read across both sides")
    p.add_argument("--sched-interval", type=float, default=None,
                   help="least seconds between scheduler calls (default 0.1)")
    p.add_argument("--log-decisions", action="store_true",
                   help="record every scheduler decision in the JSON report")
    p.add_argument("--sweep", default=None, metavar="KEY=V1,V2",
                   help="grid over pd (e.g. pd=1P4D,2P4D), snic (Gbps, e.g. snic=200,400,800) "
                   "or agents; runs on all cores, one plot")
    p.add_argument("--json", metavar="PATH", help="write the result object to PATH")
    p.add_argument("--plot", metavar="DIR", help="write PNG figures into DIR")
    p.set_defaults(func=run)


def _systems(text: str) -> list[str]:
    if text == "all":
        return list(SYSTEM_NAMES)
    names = [s.strip() for s in text.split(",") if s.strip()]
    for s in names:
        if s not in SYSTEM_NAMES:
            raise UserInputError(f"unknown system {s!r}; choose from {', '.join(SYSTEM_NAMES)} or all")
    return names


def _workload(args: argparse.Namespace, agents: int) -> Any:
    from dualpath.workload.generator import generate, parse_max_len
    from dualpath.workload.workload import offline_workload, online_workload

    if args.agents < 1:
        raise UserInputError(f"--agents must be >= 1, got {args.agents}")
    if args.trace:
        from dualpath.workload.loader import load_trajectories

        trajs, _ = load_trajectories(Path(args.trace), "auto")
    else:
        trajs = generate(parse_max_len(args.max_len), agents, args.seed)
    if args.mode == "offline":
        return offline_workload(trajs, agents)
    if args.aps is None:
        raise UserInputError("--mode online needs --aps (agents per second)")
    return online_workload(trajs, aps=args.aps, seed=args.seed, num_agents=agents)


def run(args: argparse.Namespace) -> int:
    from dualpath.bench.report import format_table, machine_info, write_json
    from dualpath.sim.api import agents_from_workload, config_from_args, simulate
    from dualpath.sim.hardware import load_hardware

    systems = _systems(args.system)
    base = config_from_args(argparse.Namespace(**{**vars(args), "system": systems[0]}), args.mode)
    hw = load_hardware(base.hardware)
    sweep = None
    if args.sweep:
        from dualpath.sim.sweep import parse_sweep

        sweep = parse_sweep(args.sweep)
    n_agents = args.agents
    if sweep and sweep[0] == "agents":
        n_agents = max(n_agents, *(int(float(v)) for v in sweep[1]))
    agents, ids = agents_from_workload(_workload(args, n_agents))
    result: dict[str, Any] = {"machine": machine_info()}
    if sweep:
        from dualpath.sim.plots import plot_sweep
        from dualpath.sim.sweep import run_sweep

        key, values = sweep
        points = run_sweep(key, values, [replace(base, system=s) for s in systems], agents, hw)
        print(format_table(["value", "system", "jct_s", "ttft_s_p50", "snic_max/avg"],
                           [[p["value"], p["system"], p["jct_s"], p["ttft_s_p50"],
                             p["snic_max_over_avg"]] for p in points]))
        result.update({"sweep_key": key, "sweep": points})
        if args.plot:
            Path(args.plot).mkdir(parents=True, exist_ok=True)
            print(f"wrote {plot_sweep(points, key, Path(args.plot) / 'sweep.png')}")
    else:
        reports = []
        for s in systems:
            run_ = simulate(replace(base, system=s), agents, agent_ids=ids, hardware=hw, progress=True)
            reports.append(run_.report)
            if args.plot and s == systems[-1]:
                from dualpath.bench.plots import write_plots

                write_plots(run_.records, args.plot, title=s)
        rows = [[r["system"], r["jct_s"], r["throughput_tok_s"], r["ttft_s_p50"], r["ttft_s_p99"],
                 r["tpot_s_p50"], r["snic_max_over_avg"], r["unfinished_turns"]] for r in reports]
        print(format_table(["system", "jct_s", "tok/s", "ttft_p50", "ttft_p99", "tpot_p50",
                            "snic_max/avg", "unfinished"], rows))
        result.update(reports[0] if len(reports) == 1 else {"runs": reports})
        if args.plot:
            from dualpath.sim.plots import plot_jct_bars, plot_nic_utilization, plot_ttft_breakdown

            out = Path(args.plot)
            out.mkdir(parents=True, exist_ok=True)
            plot_jct_bars(reports, out / "jct_per_system.png")
            io_runs = [r for r in reports if r["system"] != "oracle"] or reports
            shown = next((r for r in io_runs if r["system"] == "dualpath"), io_runs[-1])
            plot_nic_utilization(shown, out / "nic_utilization.png")
            plot_ttft_breakdown(reports, out / "ttft_breakdown.png")
            print(f"wrote figures into {out}")
    if args.json:
        write_json(args.json, result)
        print(f"wrote {args.json}")
    return 0
