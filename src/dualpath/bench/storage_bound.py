"""`dualpath bench storage-bound`: offline JCT of every `--system` on a real local cluster
whose storage NICs are the bottleneck (1P2D, one engine per node).

Scenario. Agents are 64K-style trajectories (`dualpath trace generate`), every length scaled
by `--scale` so contexts fit the model. Each agent resumes mid-trajectory, as in a long RL
rollout: its first measured turn carries the whole context so far, which a warm-up run
(unlimited NICs, not timed) has already persisted to the KV store; it then runs `--turns`
more turns back to back. Every system starts from a byte-identical copy of that warm store,
so all of them load the same KV. The SNIC rate is low enough that loading dominates compute;
each engine's CNIC runs at `--cnic-factor` x the SNIC rate (a paper node has 8 CNICs per
SNIC; with one engine per node a smaller factor keeps the P/D transfer bottleneck-free,
DESIGN.md section 2).

With three nodes' SNICs instead of the prefill node's one, the storage-bound limit of
`dualpath` over `basic` is 3x. A second scenario with unlimited storage bandwidth compares
`dualpath` with `oracle` (all I/O free) to show what the dual path costs when storage is not
the limit.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from dualpath.bench.report import format_table, machine_info
from dualpath.core.errors import UserInputError
from dualpath.core.systems import SYSTEM_NAMES
from dualpath.core.units import parse_bandwidth
from dualpath.workload.trajectory import Trajectory, Turn
from dualpath.workload.workload import Workload, offline_workload

logger = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--agents", type=int, default=16, help="concurrent agents (16)")
    p.add_argument("--turns", type=int, default=4, help="measured turns per agent (4)")
    p.add_argument("--max-len", default="64k", help="trace family (64k)")
    p.add_argument("--scale", type=float, default=0.125,
                   help="multiply every trajectory length by this (0.125: 64K -> 8K context)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default="tiny", help="model of every engine (tiny)")
    p.add_argument("--snic-bandwidth", default="8MB/s", help="per-node storage NIC (8MB/s)")
    p.add_argument("--cnic-factor", type=float, default=8.0,
                   help="CNIC rate as a multiple of the SNIC rate (8)")
    p.add_argument("--systems", default=",".join(SYSTEM_NAMES),
                   help="comma-separated systems to run (all five)")
    p.add_argument("--no-unbound", action="store_true",
                   help="skip the unlimited-storage dualpath-vs-oracle scenario")
    p.add_argument("--work-dir", default=None, help="where the stores go (a temp dir)")
    p.add_argument("--plot", default=None, metavar="DIR", help="write jct_per_system.png here")
    p.add_argument("--testbed", choices=["local", "netns"], default="local",
                   help="local: one host, NICs emulated in software (default); netns: five "
                        "network namespaces, NICs shaped by the kernel, Redis store (root)")
    p.add_argument("--engine", choices=("runtime", "vllm"), default="runtime",
                   help="runtime: our own engines [default]; vllm: vLLM instances with the "
                        "DualPath connector (= `dualpath bench vllm-storage-bound`)")
    from dualpath.bench.vllm_storage_bound import add_vllm_arguments

    add_vllm_arguments(p)


def build_workload(args: argparse.Namespace) -> tuple[Workload, Workload]:
    """(warm-up, measured) workloads: the same agents resumed mid-trajectory."""
    from dualpath.workload.generator import generate

    if args.agents < 1 or args.turns < 1:
        raise UserInputError("--agents and --turns must be >= 1")
    warm: list[Trajectory] = []
    measured: list[Trajectory] = []
    for traj in generate(args.max_len, args.agents, args.seed):
        t = traj.scaled(args.scale)
        start = max(0, min(len(t.turns) // 2, len(t.turns) - args.turns - 1))
        context = sum(x.append_tokens + x.gen_tokens for x in t.turns[:start])
        first = Turn(context + t.turns[start].append_tokens, t.turns[start].gen_tokens)
        turns = (first, *t.turns[start + 1:start + args.turns])
        warm.append(replace(t, turns=(first,)))
        measured.append(replace(t, turns=turns))
    return offline_workload(warm), offline_workload(measured)


def cluster_config(model: str, store_path: Path) -> Any:
    """The scenario's cluster (1P2D, one engine per node, NICs unlimited until a run sets
    them); the online capacity bench (`storage_bound_online`) runs the same one."""
    from dualpath.core.config import ClusterConfig

    return ClusterConfig(model=model, prefill_nodes=1, decode_nodes=2, engines_per_node=1,
                         decode_kv_bytes=256 << 20, pe_buffer_bytes=256 << 20,
                         de_buffer_bytes=256 << 20, store_path=str(store_path))


async def _run_cluster(config: Any, workload: Workload) -> tuple[Any, dict[int, dict[str, float]]]:
    from dualpath.bench.cluster_target import ClusterTarget
    from dualpath.bench.driver import run_workload_async
    from dualpath.runtime.cluster import LocalCluster
    from dualpath.workload.tokens import TokenSource

    cluster = LocalCluster(config)
    await cluster.start()
    try:
        tokens = TokenSource(cluster.model_config.vocab_size,
                             forbidden_ids=cluster.tokenizer.eos_token_ids, seed=0)
        result = await run_workload_async(ClusterTarget(cluster), workload, tokens=tokens,
                                          progress=True, desc=config.system)
        await asyncio.sleep(0.8)  # the engines' last counter reports
        return result, cluster.counters()
    finally:
        await cluster.shutdown()


def _snic_bytes(counters: dict[int, dict[str, float]], engine_nodes: dict[int, int]) -> list[float]:
    """Bytes each node's SNIC moved (reads + writes); one engine per node reports it."""
    per_node: dict[int, float] = {}
    for engine_id, c in counters.items():
        node = engine_nodes.get(engine_id, engine_id)
        total = c.get("snic.rx.kv.bytes", 0.0) + c.get("snic.tx.kv.bytes", 0.0)
        per_node[node] = max(per_node.get(node, 0.0), total)
    return [per_node[n] for n in sorted(per_node)]


def systems_and_snic(args: argparse.Namespace) -> tuple[list[str], float]:
    """`--systems` (each a known name) and the finite `--snic-bandwidth` in bytes/s."""
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    for s in systems:
        if s not in SYSTEM_NAMES:
            raise UserInputError(f"unknown system {s!r}; choose from {', '.join(SYSTEM_NAMES)}")
    snic = parse_bandwidth(args.snic_bandwidth)
    if snic is None:
        raise UserInputError("--snic-bandwidth must be finite for a storage-bound scenario")
    return systems, snic


def run(args: argparse.Namespace) -> dict[str, Any]:
    if getattr(args, "engine", "runtime") == "vllm":
        from dualpath.bench.vllm_storage_bound import from_storage_bound

        if getattr(args, "testbed", "local") != "local":
            raise UserInputError("--engine vllm runs on the local testbed only (software NICs)")

        return from_storage_bound(args)
    from dualpath.workload.metrics import build_report

    systems, snic = systems_and_snic(args)
    cnic = snic * args.cnic_factor
    if getattr(args, "testbed", "local") == "netns":
        from dualpath.bench import storage_bound_netns

        out_netns = storage_bound_netns.run(args, systems, snic, cnic)
        if args.plot:
            _plot(out_netns["systems"], Path(args.plot))
        return out_netns
    warm_wl, measured_wl = build_workload(args)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="dualpath-storage-bound-"))
    work.mkdir(parents=True, exist_ok=True)
    base = cluster_config(args.model, work / "warm")
    engine_nodes = {0: 0, 1: 1, 2: 2}
    print(f"warm-up: {args.agents} agents' contexts into {work / 'warm'}", file=sys.stderr)
    shutil.rmtree(work / "warm", ignore_errors=True)
    asyncio.run(_run_cluster(replace(base, system="dualpath"), warm_wl))

    def measure(system: str, snic_rate: float | None, tag: str) -> dict[str, Any]:
        store = work / f"{tag}-{system}"
        shutil.rmtree(store, ignore_errors=True)
        shutil.copytree(work / "warm", store)
        cfg = replace(base, system=system, store_path=str(store), snic_bytes_s=snic_rate,
                      cnic_bytes_s=None if snic_rate is None else cnic)
        result, counters = asyncio.run(_run_cluster(cfg, measured_wl))
        report = build_report(result.records, mode="offline",
                              unfinished_turns=result.unfinished_turns)
        snic_bytes = _snic_bytes(counters, engine_nodes)
        avg = sum(snic_bytes) / len(snic_bytes) if snic_bytes else 0.0
        shutil.rmtree(store, ignore_errors=True)
        return {
            "jct_s": report["jct_s"], "throughput_tok_s": report["throughput_tok_s"],
            "ttft_s_p50": report["ttft_s_p50"], "ttft_s_p99": report["ttft_s_p99"],
            "tpot_s_p50": report["tpot_s_p50"], "num_turns": report["num_turns"],
            "cached_tokens_fraction": report["cached_tokens_fraction"],
            "bytes_read_pe_path": sum(c.get("bytes_read_pe_path", 0.0) for c in counters.values()),
            "bytes_read_de_path": sum(c.get("bytes_read_de_path", 0.0) for c in counters.values()),
            "snic_bytes_per_node": snic_bytes,
            "snic_max_over_avg": max(snic_bytes) / avg if avg > 0 else None,
        }

    results = {s: measure(s, snic, "bound") for s in systems}
    unbound: dict[str, Any] = {}
    if not args.no_unbound:
        unbound = {s: measure(s, None, "unbound") for s in ("dualpath", "oracle")}
    shutil.rmtree(work / "warm", ignore_errors=True)

    def ratio(a: str, b: str, table: dict[str, Any]) -> float | None:
        if a in table and b in table and table[b]["jct_s"]:
            return float(table[a]["jct_s"] / table[b]["jct_s"])
        return None

    out: dict[str, Any] = {
        "scenario": {"agents": args.agents, "turns": args.turns, "max_len": args.max_len,
                     "scale": args.scale, "model": args.model, "layout": "1P2D",
                     "snic_bytes_s": snic, "cnic_bytes_s": cnic, "seed": args.seed},
        "systems": results,
        "speedup_dualpath_over_basic": ratio("basic", "dualpath", results),
        "speedup_limit_storage_bound": 3.0,
        "unbound_systems": unbound,
        "dualpath_over_oracle_jct_unbound": ratio("dualpath", "oracle", unbound),
        "machine": machine_info(),
    }
    rows = [(s, r["jct_s"], r["throughput_tok_s"], r["bytes_read_pe_path"] / 1e6,
             r["bytes_read_de_path"] / 1e6, r["snic_max_over_avg"] or float("nan"))
            for s, r in results.items()]
    print(format_table(["system", "jct_s", "tok/s", "PE-path MB", "DE-path MB",
                        "snic max/avg"], rows))
    if out["speedup_dualpath_over_basic"]:
        print(f"dualpath over basic: {out['speedup_dualpath_over_basic']:.2f}x (limit 3x)")
    if out["dualpath_over_oracle_jct_unbound"]:
        print(f"unlimited storage: dualpath JCT / oracle JCT = "
              f"{out['dualpath_over_oracle_jct_unbound']:.3f}")
    if args.plot:
        _plot(results, Path(args.plot))
    return out


def _plot(results: dict[str, Any], out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    names = list(results)
    ax.bar(names, [results[n]["jct_s"] for n in names], color="tab:blue")
    ax.set_ylabel("offline JCT (s)")
    ax.set_title("storage-bound local cluster (1P2D)")
    fig.tight_layout()
    fig.savefig(out_dir / "jct_per_system.png", dpi=120)
    plt.close(fig)
