"""`dualpath bench sim-validate`: the simulator against the paper's published numbers.

1. Cache-compute ratios (DESIGN.md section 1) computed from the model presets alone.
2. DS 660B, 64K trace, 2P4D, offline: JCT of every `--system` rung, from which
   Basic/DualPath and Oracle/DualPath (at the largest agent count, 2048 by default) and the
   ablation ladder (JCT reduction vs Basic, averaged over the agent counts as the paper
   averages it over 1024 and 2048); and, beyond the paper, dualpath with split reads
   (`split_over_dualpath_jct`, averaged).
Runs spread over all cores (one process per run).
"""

from __future__ import annotations

import argparse
import os
import time
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from dualpath.bench.report import format_table, machine_info
from dualpath.core.errors import UserInputError
from dualpath.core.systems import SYSTEM_NAMES

CONTEXTS = {"16k": 16 * 1024, "32k": 32 * 1024, "64k": 64 * 1024}
PAPER_LADDER: dict[str, float] = {"layerwise": -0.172, "dualpath-rr": -0.382, "dualpath": -0.456}
PAPER: dict[str, Any] = {"basic_over_dualpath_jct": 1.87, "ablation_jct_reduction": PAPER_LADDER}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--agents", default="1024,2048",
                        help="agent count(s), comma list (default 1024,2048): the ladder is averaged "
                        "over them, as the paper averages it over 1024 and 2048; Basic/DualPath and "
                        "Oracle/DualPath are taken at the largest count (the paper's 1.87x is at 2048)")
    parser.add_argument("--max-len", default="64k", help="trace max length (default 64k)")
    parser.add_argument("--pd", default="2P4D", help="layout (default 2P4D)")
    parser.add_argument("--seed", type=int, default=0, help="trace seed")
    parser.add_argument("--no-split", action="store_true",
                        help="skip the beyond-the-paper run of dualpath with split reads")
    parser.add_argument("--processes", type=int, default=None, help="worker processes (default: all cores)")
    parser.add_argument("--plot", type=Path, default=None, metavar="DIR",
                        help="write ladder_vs_paper.png and jct_per_system_<agents>.png into DIR")


def ratios() -> dict[str, Any]:
    from dualpath.sim.model_cost import MODEL_PRESETS
    from dualpath.sim.ratio import PAPER_RATIOS, cache_compute_gb_per_pflop

    out: dict[str, Any] = {}
    for name, m in MODEL_PRESETS.items():
        out[name] = {k: round(cache_compute_gb_per_pflop(m, c), 2) for k, c in CONTEXTS.items()}
        if name in PAPER_RATIOS:
            lo, hi = PAPER_RATIOS[name]
            out[name]["paper_16k_64k"] = [lo, hi]
            out[name]["within_15pct"] = bool(abs(out[name]["16k"] / lo - 1) <= 0.15 and abs(out[name]["64k"] / hi - 1) <= 0.15)
    return out


def _run(job: tuple[str, int, str, str, int, bool]) -> dict[str, Any]:
    from dualpath.sim.api import simulate
    from dualpath.sim.config import SimConfig, parse_pd
    from dualpath.workload.generator import generate

    system, agents, max_len, pd, seed, split = job
    trajs = generate(max_len, agents, seed)
    turns = [(0.0, [(t.append_tokens, t.gen_tokens) for t in tr.turns]) for tr in trajs]
    cfg = SimConfig(model="ds-660b", system=system, pd=parse_pd(pd), seed=seed, timeline_bin_s=None,
                    split_reads=split)
    t0 = time.perf_counter()
    r = simulate(cfg, turns).report
    return {"system": system + ("+split" if split else ""), "agents": agents, "jct_s": r["jct_s"], "wall_s": time.perf_counter() - t0,
            "snic_max_over_avg": r["snic_max_over_avg"], "bytes_read_pe_path": r["bytes_read_pe_path"],
            "bytes_read_de_path": r["bytes_read_de_path"], "ttft_s_p50": r["ttft_s_p50"],
            "unfinished_turns": r["unfinished_turns"]}


def run(args: argparse.Namespace) -> dict[str, Any]:
    try:
        counts = [int(x) for x in str(args.agents).split(",") if x.strip()]
    except ValueError:
        raise UserInputError(f"--agents must be a comma list of integers, got {args.agents!r}") from None
    if not counts or min(counts) < 1:
        raise UserInputError("--agents needs at least one positive count")
    rat = ratios()
    print(format_table(["model", "16k", "32k", "64k", "paper 16k-64k"],
                       [[m, v["16k"], v["32k"], v["64k"], v.get("paper_16k_64k", "-")] for m, v in rat.items()]))
    from dualpath.sim.published import compute_check

    check = compute_check()
    pub = check["published"]
    print(format_table(["DeepSeek V3 on H800 (day 6)", "published", "simulated"], [
        *[[f"prefill input tok/s/node, prompt {p}", pub["prefill_input_tok_s_per_node"], v]
          for p, v in check["sim_prefill_input_tok_s_per_node_by_prompt"].items()],
        *[[f"decode output tok/s/node at 21 tok/s/user, context {c}",
           pub["decode_output_tok_s_per_node"], v["output_tok_s_per_node"]]
          for c, v in check["sim_decode_at_published_user_speed_by_context"].items()],
    ]))
    jobs = [(s, n, args.max_len, args.pd, args.seed, False) for n in counts for s in SYSTEM_NAMES]
    if not args.no_split:
        jobs += [("dualpath", n, args.max_len, args.pd, args.seed, True) for n in counts]
    procs = min(len(jobs), args.processes or os.cpu_count() or 1)
    if procs > 1:
        with get_context("spawn").Pool(procs) as pool:
            runs = list(pool.imap(_run, jobs))
    else:
        runs = [_run(j) for j in jobs]
    jct = {(r["system"], r["agents"]): r["jct_s"] for r in runs}
    per_count = {}
    for n in counts:
        d = jct[("dualpath", n)]
        b = jct[("basic", n)]
        per_count[str(n)] = {
            "basic_over_dualpath_jct": b / d,
            "oracle_over_dualpath_jct": jct[("oracle", n)] / d,
            "ablation_jct_reduction": {s: jct[(s, n)] / b - 1 for s in ("layerwise", "dualpath-rr", "dualpath")},
        }
        if ("dualpath+split", n) in jct:
            per_count[str(n)]["split_over_dualpath_jct"] = jct[("dualpath+split", n)] / d
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    result: dict[str, Any] = {
        "benchmark": "sim-validate",
        "cache_compute_gb_per_pflop": rat,
        "compute_check": check,
        "setting": {"model": "ds-660b", "max_len": args.max_len, "pd": args.pd, "mode": "offline",
                    "agents": counts, "seed": args.seed},
        "basic_over_dualpath_jct": per_count[str(max(counts))]["basic_over_dualpath_jct"],
        "oracle_over_dualpath_jct": per_count[str(max(counts))]["oracle_over_dualpath_jct"],
        "ablation_jct_reduction": {s: mean([v["ablation_jct_reduction"][s] for v in per_count.values()])
                                   for s in ("layerwise", "dualpath-rr", "dualpath")},
        "split_over_dualpath_jct": (mean([v["split_over_dualpath_jct"] for v in per_count.values()])
                                    if not args.no_split else None),
        "per_agent_count": per_count,
        "paper": PAPER,
        "runs": runs,
        "machine": machine_info(),
    }
    print(format_table(["system", "agents", "jct_s", "snic_max/avg", "wall_s"],
                       [[r["system"], r["agents"], r["jct_s"], r["snic_max_over_avg"], r["wall_s"]] for r in runs]))
    print(format_table(["metric", "simulated", "paper"], [
        ["basic/dualpath JCT", result["basic_over_dualpath_jct"], 1.87],
        ["oracle/dualpath JCT", result["oracle_over_dualpath_jct"], "<= 1"],
        ["split-reads/dualpath JCT", result["split_over_dualpath_jct"], "(not in paper)"],
        *[[f"ablation {s}", v, PAPER_LADDER[s]]
          for s, v in result["ablation_jct_reduction"].items()],
    ]))
    if args.plot is not None:
        result["plots"] = _plots(args.plot, result, runs, counts)
    return result


def _plots(folder: Path, result: dict[str, Any], runs: list[dict[str, Any]], counts: list[int]) -> list[str]:
    from dualpath.sim.plots import plot_jct_bars, plot_ladder_vs_paper

    folder.mkdir(parents=True, exist_ok=True)
    paths = [plot_ladder_vs_paper(result["ablation_jct_reduction"], PAPER_LADDER, folder / "ladder_vs_paper.png")]
    for n in counts:
        reports = [{"system": r["system"], "jct_s": r["jct_s"], "model": "ds-660b",
                    "pd": result["setting"]["pd"], "num_agents": n} for r in runs if r["agents"] == n]
        paths.append(plot_jct_bars(reports, folder / f"jct_per_system_{n}.png"))
    return [str(p) for p in paths]
