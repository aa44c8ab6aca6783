"""`dualpath bench vllm-storage-bound` (= `dualpath bench storage-bound --engine vllm`).

The storage-bound scenario of `dualpath.bench.storage_bound`, on real vLLM instances with the
DualPath connector and emulated NICs, driven through the router's OpenAI API by the same
benchmark driver (`HttpTarget`: streamed completions of token-id prompts, forced lengths).

Part 1, storage-bound (one 1P2D cluster, every node's SNIC at `--snic-bandwidth`, CNICs at
`--cnic-factor` x that): two routers front the same instances, `basic` (round-robin, PE-path
reads only) and `dualpath` (the full scheduler, both read paths). A warm-up (not timed)
persists each agent's context for two token seeds at once; then `basic` runs the agents with
seed A and `dualpath` the same trajectories with seed B — identical lengths, disjoint KV
blocks, so neither run finds the other's writes. JCTs and the speedup come from one run.

Part 2, storage unlimited (a 1P1D cluster without NIC limits plus one plain vLLM instance
with its own prefix cache, no connector): after both are warmed with the same contexts,
`dualpath` and `plain-vllm` run the same workload (seed C); `dualpath_over_plain_jct_unbound`
is the connector's overhead: the P -> D KV transfer and the store round trip of every turn,
against a single instance that keeps everything in its own memory.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dualpath.bench.report import format_table, machine_info
from dualpath.core.errors import UserInputError
from dualpath.core.units import parse_bandwidth

# vLLM-engine defaults where they differ from `storage-bound`'s (SmolLM2 on CPU instances).
# Sized for SmolLM2 on one CPU thread per instance: the warm-up prefills every context.
VLLM_DEFAULTS: dict[str, Any] = {"agents": 4, "turns": 3, "scale": 0.03,
                                 "snic_bandwidth": "20MB/s"}
_RUNTIME_DEFAULTS: dict[str, Any] = {"agents": 16, "turns": 4, "scale": 0.125,
                                     "snic_bandwidth": "8MB/s"}
SEEDS = {"basic": 101, "dualpath": 202, "unbound": 303}


def _seed(system: str, repeat: int) -> int:
    return SEEDS[system] + 1000 * repeat


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--agents", type=int, default=VLLM_DEFAULTS["agents"])
    p.add_argument("--turns", type=int, default=VLLM_DEFAULTS["turns"])
    p.add_argument("--max-len", default="64k")
    p.add_argument("--scale", type=float, default=VLLM_DEFAULTS["scale"],
                   help="multiply every trajectory length (0.03: ~1K-token contexts)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--snic-bandwidth", default=VLLM_DEFAULTS["snic_bandwidth"])
    p.add_argument("--cnic-factor", type=float, default=8.0)
    p.add_argument("--no-unbound", action="store_true", help="skip part 2 (overhead)")
    p.add_argument("--work-dir", default=None)
    add_vllm_arguments(p)


def add_vllm_arguments(p: argparse.ArgumentParser) -> None:
    """The flags only the vLLM engine has (also added to `storage-bound`)."""
    p.add_argument("--repeats", type=int, default=2,
                   help="vLLM engine: bound runs per system, interleaved basic, dualpath, "
                        "basic, ... (2)")
    p.add_argument("--vllm-model-dir", default=None,
                   help="Hugging Face model directory vLLM serves (default: make vllm-env's)")
    p.add_argument("--vllm-kv-cache-gib", type=int, default=2,
                   help="VLLM_CPU_KVCACHE_SPACE of each instance, GiB (2)")
    p.add_argument("--vllm-threads", type=int, default=1, help="torch threads per instance (1)")


def from_storage_bound(args: argparse.Namespace) -> dict[str, Any]:
    """`storage-bound --engine vllm`: flags left at storage-bound's defaults take ours."""
    for name, runtime_default in _RUNTIME_DEFAULTS.items():
        if getattr(args, name) == runtime_default:
            setattr(args, name, VLLM_DEFAULTS[name])
    return run(args)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from dualpath.bench.storage_bound import build_workload
    from dualpath.integrations.vllm.launch import DEFAULT_MODEL_DIR, LaunchConfig

    snic = parse_bandwidth(args.snic_bandwidth)
    if snic is None:
        raise UserInputError("--snic-bandwidth must be finite for a storage-bound scenario")
    warm_wl, measured_wl = build_workload(args)
    temp = args.work_dir is None
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="dualpath-vllm-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    run_root = f"/dev/shm/dualpath-vllm-bench-{os.getpid()}"
    base = LaunchConfig(model_dir=args.vllm_model_dir or str(DEFAULT_MODEL_DIR),
                        max_model_len=4096, kv_cache_gib=args.vllm_kv_cache_gib,
                        threads_per_instance=args.vllm_threads)
    bound_cfg = _with(base, store_path=str(work / "bound-store"), run_dir=f"{run_root}-bound",
                      snic_bytes_s=snic, cnic_bytes_s=snic * args.cnic_factor)
    if args.repeats < 1:
        raise UserInputError("--repeats must be >= 1")
    runs: dict[str, list[dict[str, Any]]] = {}
    results: dict[str, Any] = {}
    try:
        with _cluster(bound_cfg, 1, 2, 0, ("basic", "dualpath")) as (cluster, routers):
            print(f"bound: warm-up ({2 * args.repeats} token seeds)", file=sys.stderr)
            _drive_many([(routers["dualpath"], warm_wl, _seed(system, r))
                         for r in range(args.repeats) for system in ("basic", "dualpath")])
            for r in range(args.repeats):
                for system in ("basic", "dualpath"):
                    print(f"bound: {system} (run {r + 1} of {args.repeats})", file=sys.stderr)
                    runs.setdefault(system, []).append(
                        _measure(cluster, routers[system], measured_wl, _seed(system, r)))
        results = {system: _combine(rs) for system, rs in runs.items()}
        unbound: dict[str, Any] = {}
        if not args.no_unbound:
            free_cfg = _with(base, store_path=str(work / "unbound-store"),
                             run_dir=f"{run_root}-unbound")
            with _cluster(free_cfg, 1, 1, 1, ("dualpath",)) as (cluster, routers):
                plain = cluster.of_role("plain")[0].url
                print("unbound: warm-up", file=sys.stderr)
                _drive_many([(routers["dualpath"], warm_wl, SEEDS["unbound"]),
                             (plain, warm_wl, SEEDS["unbound"])])
                print("unbound: dualpath", file=sys.stderr)
                unbound["dualpath"] = _measure(cluster, routers["dualpath"], measured_wl,
                                               SEEDS["unbound"])
                print("unbound: plain vLLM", file=sys.stderr)
                unbound["plain-vllm"] = _measure(cluster, plain, measured_wl, SEEDS["unbound"])
    except BaseException:
        print(f"failed; instance and router logs kept in {run_root}-*", file=sys.stderr)
        raise
    else:
        for tag in ("bound", "unbound"):
            shutil.rmtree(f"{run_root}-{tag}", ignore_errors=True)
    finally:
        for store in ("bound-store", "unbound-store"):
            shutil.rmtree(work / store, ignore_errors=True)
        if temp:
            shutil.rmtree(work, ignore_errors=True)
    return _report(args, snic, results, unbound)


def _with(cfg: Any, **changes: Any) -> Any:
    from dataclasses import replace

    return replace(cfg, **changes)


@contextmanager
def _cluster(cfg: Any, prefill: int, decode: int, plain: int, systems: tuple[str, ...]
             ) -> Iterator[tuple[Any, dict[str, str]]]:
    from dualpath.integrations.vllm.identity import model_config
    from dualpath.integrations.vllm.launch import RouterProcess, VllmCluster

    shutil.rmtree(cfg.run_dir, ignore_errors=True)
    cluster = VllmCluster.build(cfg, prefill, decode, plain=plain)
    routers: list[RouterProcess] = []
    print(f"starting {prefill}P{decode}D vLLM instances (+{plain} plain)", file=sys.stderr)
    cluster.start()
    try:
        bpt = model_config(cfg.model_dir, cfg.dtype).kv_bytes_per_token
        spec = Path(cfg.run_dir) / "cluster.json"
        spec.write_text(cluster.cluster_spec(bpt).to_json())
        for system in systems:
            routers.append(RouterProcess(spec, args=("--system", system),
                                         log_path=Path(cfg.run_dir) / f"router-{system}.log"))
        for r in routers:
            r.wait_ready()
        yield cluster, {s: r.url for s, r in zip(systems, routers, strict=True)}
    finally:
        for r in routers:
            r.stop()
        cluster.stop()


def _drive_many(jobs: list[tuple[str, Any, int]]) -> list[Any]:
    """Run several workloads at once (each against its URL, with its token seed)."""
    from dualpath.bench.driver import run_workload_async
    from dualpath.bench.http_target import HttpTarget
    from dualpath.workload.tokens import TokenSource

    async def main() -> list[Any]:
        targets = [HttpTarget(url, model="smollm2") for url, _, _ in jobs]
        try:
            return list(await asyncio.gather(*(
                run_workload_async(t, workload,
                                   tokens=TokenSource(49152, forbidden_ids=range(17), seed=seed))
                for t, (_, workload, seed) in zip(targets, jobs, strict=True))))
        finally:
            for t in targets:
                await t.close()

    return asyncio.run(main())


def _counters(cluster: Any) -> dict[str, dict[str, float]]:
    from dualpath.integrations.vllm.resources import InstanceStats, NodeFiles, open_snic

    out: dict[str, dict[str, float]] = {}
    for s in cluster.specs:
        if s.role == "plain":
            continue
        stats = InstanceStats(Path(cluster.cfg.run_dir) / f"stats-{s.name}.counters")
        nic = open_snic(NodeFiles(cluster.cfg.run_dir, s.node_id), None)
        flat = nic.stats().flat()
        out[s.name] = {**stats.snapshot(), "node": float(s.node_id),
                       "snic_bytes": flat["rx.kv.bytes"] + flat["tx.kv.bytes"]}
        stats.close()
        nic.close()
    return out


def _measure(cluster: Any, url: str, workload: Any, seed: int) -> dict[str, Any]:
    from dualpath.workload.metrics import build_report

    before = _counters(cluster)
    (result,) = _drive_many([(url, workload, seed)])
    after = _counters(cluster)
    report = build_report(result.records, mode="offline", unfinished_turns=result.unfinished_turns)

    def delta(name: str) -> float:
        return sum(after[i][name] - before[i][name] for i in after)

    # one instance per node here: per node, in node order
    snic = [after[i]["snic_bytes"] - before[i]["snic_bytes"]
            for i in sorted(after, key=lambda name: after[name]["node"])]
    avg = sum(snic) / len(snic) if snic else 0.0
    return {
        "jct_s": report["jct_s"], "throughput_tok_s": report["throughput_tok_s"],
        "ttft_s_p50": report["ttft_s_p50"], "ttft_s_p99": report["ttft_s_p99"],
        "tpot_s_p50": report["tpot_s_p50"], "num_turns": report["num_turns"],
        "cached_tokens_fraction": report["cached_tokens_fraction"],
        "length_mismatches": result.length_mismatches,
        "bytes_read_pe_path": delta("bytes_read_pe_path"),
        "bytes_read_de_path": delta("bytes_read_de_path"),
        "hit_bytes_relayed": delta("hit_bytes_relayed"),
        "kv_bytes_sent": delta("kv_bytes_sent"),
        "relays_failed": delta("relays_failed"),
        "snic_bytes_per_node": snic,
        "snic_max_over_avg": max(snic) / avg if avg > 0 else None,
    }


def _combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean JCT / throughput over repeats (first run's other fields), plus every run."""
    out = dict(runs[0])
    for key in ("jct_s", "throughput_tok_s"):
        out[key] = sum(r[key] for r in runs) / len(runs)
    for key in ("bytes_read_pe_path", "bytes_read_de_path", "hit_bytes_relayed",
                "kv_bytes_sent", "relays_failed"):
        out[key] = sum(r[key] for r in runs)
    snic = [sum(col) for col in zip(*(r["snic_bytes_per_node"] for r in runs), strict=True)]
    avg = sum(snic) / len(snic) if snic else 0.0
    out["snic_bytes_per_node"] = snic
    out["snic_max_over_avg"] = max(snic) / avg if avg > 0 else None
    out["jct_s_runs"] = [r["jct_s"] for r in runs]
    out["runs"] = runs
    return out


def _report(args: argparse.Namespace, snic: float, results: dict[str, Any],
            unbound: dict[str, Any]) -> dict[str, Any]:
    def ratio(a: str, b: str, table: dict[str, Any]) -> float | None:
        if a in table and b in table and table[b]["jct_s"]:
            return float(table[a]["jct_s"] / table[b]["jct_s"])
        return None

    out: dict[str, Any] = {
        "engine": "vllm",
        "scenario": {"agents": args.agents, "turns": args.turns, "max_len": args.max_len,
                     "scale": args.scale, "model": "smollm2 (vllm-cpu 0.32.0, float32)",
                     "layout": "1P2D", "unbound_layout": "1P1D + 1 plain vLLM",
                     "snic_bytes_s": snic, "cnic_bytes_s": snic * args.cnic_factor,
                     "seed": args.seed, "repeats": args.repeats,
                     "token_seeds": {k: [_seed(k, r) for r in range(args.repeats)]
                                     for k in SEEDS}},
        "systems": results,
        "speedup_dualpath_over_basic": ratio("basic", "dualpath", results),
        "speedup_limit_storage_bound": 3.0,
        "unbound_systems": unbound,
        "dualpath_over_plain_jct_unbound": ratio("dualpath", "plain-vllm", unbound),
        "machine": machine_info(),
    }
    rows = [(s, r["jct_s"], r["throughput_tok_s"], r["bytes_read_pe_path"] / 1e6,
             r["bytes_read_de_path"] / 1e6, r["snic_max_over_avg"] or float("nan"))
            for s, r in {**results, **{f"{k} (unbound)": v for k, v in unbound.items()}}.items()]
    print(format_table(["system", "jct_s", "tok/s", "PE-path MB", "DE-path MB",
                        "snic max/avg"], rows))
    if out["speedup_dualpath_over_basic"]:
        print(f"dualpath over basic on vLLM: {out['speedup_dualpath_over_basic']:.2f}x (limit 3x)")
    if out["dualpath_over_plain_jct_unbound"]:
        print(f"unlimited storage: dualpath JCT / plain vLLM JCT = "
              f"{out['dualpath_over_plain_jct_unbound']:.3f}")
    return out
