"""`dualpath bench sim-scale`: simulator wall time, memory and event rate at cluster scale.

Default: DS 660B 2P4D, 2,048 agents, 64K trace, dualpath (goal: under 60 s on one core).
`--full`: the paper's largest run, 48P96D (1,152 GPUs) with 48K agents (goal: under 15
minutes and 8 GB). `--replicate K`: scale by instances instead — the layout and the agents
(the same trajectories, K times over) both K times bigger; the JCT should stay the same
(`replication.jct_ratio`, goal within 5%). Runs in this process (one core); RSS is the process's peak. `wall_s`
is the simulation alone (trace generation is `workload_generation_s`); `cpu_s` is the
process CPU time of the simulation, the fair number on a machine shared with other work.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from dataclasses import replace
from typing import Any

from dualpath.bench.report import format_table, machine_info
from dualpath.core.errors import UserInputError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--full", action="store_true", help="48P96D with 49,152 agents")
    parser.add_argument("--agents", type=int, default=None, help="override the agent count")
    parser.add_argument("--pd", default=None, help="override the layout")
    parser.add_argument("--system", default="dualpath", help="rung (default dualpath)")
    parser.add_argument("--seed", type=int, default=0, help="trace seed")
    parser.add_argument("--replicate", type=int, default=None, metavar="K",
                        help="also run K instances with K times the agents and compare JCTs")


def _peak_rss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from dualpath.sim import native
    from dualpath.sim.api import simulate
    from dualpath.sim.config import SimConfig, parse_pd
    from dualpath.workload.generator import generate

    build = native.status()
    hint = "" if build.active else (" (`dualpath native build`, then DUALPATH_NATIVE=1: the "
                                    "same results in ~0.6x the time)")
    print(f"simulator: {'compiled (mypyc)' if build.active else 'pure Python'} — "
          f"{build.reason}{hint}", file=sys.stderr)

    agents = args.agents or (48 * 1024 if args.full else 2048)
    pd = parse_pd(args.pd or ("48P96D" if args.full else "2P4D"))
    t0 = time.perf_counter()
    trajs = generate("64k", agents, args.seed)
    turns = [(0.0, [(t.append_tokens, t.gen_tokens) for t in tr.turns]) for tr in trajs]
    del trajs
    gen_s = time.perf_counter() - t0
    cfg = SimConfig(model="ds-660b", system=args.system, pd=pd, seed=args.seed, timeline_bin_s=None)
    c0 = time.process_time()
    t1 = time.perf_counter()
    run_ = simulate(cfg, turns, progress=True)
    wall = time.perf_counter() - t1
    cpu = time.process_time() - c0
    r = run_.report
    result = {
        "benchmark": "sim-scale",
        "setting": {"model": "ds-660b", "pd": f"{pd[0]}P{pd[1]}D", "agents": agents, "max_len": "64k",
                    "system": args.system, "full": bool(args.full)},
        "turns": len(run_.records),
        "wall_s": wall,
        "cpu_s": cpu,
        "workload_generation_s": gen_s,
        "peak_rss_bytes": _peak_rss_bytes(),
        "events": r["sim_events"],
        "events_per_s": r["sim_events"] / wall if wall > 0 else float("nan"),
        # On a shared machine wall time includes waiting for a core; CPU time does not.
        "events_per_cpu_s": r["sim_events"] / cpu if cpu > 0 else float("nan"),
        "scheduler_calls": r["scheduler"]["calls"],
        "simulated_jct_s": r["jct_s"],
        # Which code ran: the mypyc build (`DUALPATH_NATIVE=1`) or pure Python, and why.
        "native": build.as_dict(),
        "goal_wall_s": 900.0 if args.full else 60.0,
        "machine": machine_info(),
    }
    print(format_table(["setting", "turns", "wall_s", "cpu_s", "peak_rss_MB", "events/s", "sim JCT s"],
                       [[result["setting"]["pd"] + f" x{agents}", result["turns"], wall, cpu,
                         result["peak_rss_bytes"] / 1e6, result["events_per_s"], r["jct_s"]]]))
    if args.replicate:
        k = args.replicate
        if k < 2:
            raise UserInputError("--replicate needs K >= 2")
        big = simulate(replace(cfg, pd=(pd[0] * k, pd[1] * k)), turns * k, progress=True).report
        result["replication"] = {"k": k, "pd": f"{pd[0] * k}P{pd[1] * k}D", "agents": agents * k,
                                 "jct_base_s": r["jct_s"], "jct_replicated_s": big["jct_s"],
                                 "jct_ratio": big["jct_s"] / r["jct_s"]}
        print(format_table(["instances", "layout", "agents", "sim JCT s", "vs 1 instance"],
                           [[1, result["setting"]["pd"], agents, r["jct_s"], 1.0],
                            [k, result["replication"]["pd"], agents * k, big["jct_s"],
                             result["replication"]["jct_ratio"]]]))
    return result
