"""`dualpath bench storage-bound --testbed netns`: the storage-bound scenario on kernel-shaped
networks (root only).

The same agents, warm-up and measured turns as the one-host benchmark (`storage_bound`), on a
1P2D deployment over network namespaces (`bench.netns_cluster`): Redis on the storage host,
the scheduler in the front end, one `dualpath node` per prefill/decode host. Each host's SNIC
and CNIC are `tc` HTB classes on its veth interfaces (the engines' own NIC emulation is off),
so the bottleneck and its cure are enforced by the kernel. Every system starts from a
byte-identical copy of the warm store (Redis's AOF directory, copied). Per-node SNIC bytes
come from the kernel's interface counters.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from dualpath.bench.report import format_table, machine_info
from dualpath.core.errors import UserInputError

NODE_HOSTS = ("p0", "d0", "d1")


def run(args: argparse.Namespace, systems: list[str], snic: float, cnic: float) -> dict[str, Any]:
    from dualpath.bench.netns_cluster import NetnsDeployment, NetnsLayout
    from dualpath.testbed import environment_problem

    problem = environment_problem()
    if problem is not None:
        raise UserInputError(f"--testbed netns needs root and iproute2: {problem}")
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="dualpath-storage-bound-netns-"))
    work.mkdir(parents=True, exist_ok=True)
    workload = {"agents": args.agents, "turns": args.turns, "max_len": args.max_len,
                "scale": args.scale, "seed": args.seed}
    layout = NetnsLayout(prefill_nodes=1, decode_nodes=2, snic_bytes_s=snic, cnic_bytes_s=cnic)
    results: dict[str, Any] = {}
    with NetnsDeployment(layout, work) as dep:
        print(f"warm-up: {args.agents} agents' contexts into Redis on the storage host",
              file=sys.stderr)
        warm_dir = work / "redis-warm"
        shutil.rmtree(warm_dir, ignore_errors=True)
        url = dep.start_store(warm_dir)

        def config(system: str) -> Any:
            return dep.config(store_path=url, system=system, model=args.model,
                              decode_kv_bytes=256 << 20, pe_buffer_bytes=256 << 20,
                              de_buffer_bytes=256 << 20,
                              # a benchmark, not a fault drill: on a loaded shared machine a
                              # CPU-starved engine must not be declared dead mid-measurement
                              engine_heartbeat_timeout_s=30.0)

        dep.run(config("dualpath"), {"kind": "workload", "phase": "warm", "workload": workload},
                timeout_s=3600)
        dep.stop_store()  # a clean stop: Redis flushes its AOF
        for system in systems:
            data = work / f"redis-{system}"
            shutil.rmtree(data, ignore_errors=True)
            shutil.copytree(warm_dir, data)
            url = dep.start_store(data)
            print(f"{system}: measuring", file=sys.stderr)
            out = dep.run(config(system), {"kind": "workload", "phase": "measured",
                                           "workload": workload}, timeout_s=3600)
            dep.stop_store()
            shutil.rmtree(data, ignore_errors=True)
            results[system] = _summary(out)
        shutil.rmtree(warm_dir, ignore_errors=True)
    basic, dual = results.get("basic"), results.get("dualpath")
    speedup = basic["jct_s"] / dual["jct_s"] if basic and dual and dual["jct_s"] else None
    report: dict[str, Any] = {
        "testbed": "netns",
        "scenario": {**workload, "model": args.model, "layout": "1P2D", "snic_bytes_s": snic,
                     "cnic_bytes_s": cnic, "store": "redis", "nic_shaping": "kernel (tc HTB)"},
        "systems": results,
        "speedup_dualpath_over_basic": speedup,
        "speedup_limit_storage_bound": 3.0,
        "unbound_systems": {},
        "dualpath_over_oracle_jct_unbound": None,
        "machine": machine_info(),
    }
    rows = [(s, r["jct_s"], r["bytes_read_pe_path"] / 1e6, r["bytes_read_de_path"] / 1e6,
             r["snic_max_over_avg"] or float("nan")) for s, r in results.items()]
    print(format_table(["system", "jct_s", "PE-path MB", "DE-path MB", "snic max/avg (kernel)"],
                       rows))
    if speedup:
        print(f"dualpath over basic on kernel-shaped networks: {speedup:.2f}x (limit 3x)")
    return report


def _summary(out: dict[str, Any]) -> dict[str, Any]:
    report = out["report"]
    counters = out["counters"].values()
    delta = out["kernel_counters_delta"]
    snic = [delta[h]["storage"]["rx_bytes"] + delta[h]["storage"]["tx_bytes"] for h in NODE_HOSTS]
    avg = sum(snic) / len(snic)
    return {
        "jct_s": report["jct_s"], "throughput_tok_s": report["throughput_tok_s"],
        "ttft_s_p50": report["ttft_s_p50"], "ttft_s_p99": report["ttft_s_p99"],
        "tpot_s_p50": report["tpot_s_p50"], "num_turns": report["num_turns"],
        "cached_tokens_fraction": report["cached_tokens_fraction"],
        "bytes_read_pe_path": sum(c.get("bytes_read_pe_path", 0.0) for c in counters),
        "bytes_read_de_path": sum(c.get("bytes_read_de_path", 0.0) for c in counters),
        "snic_bytes_per_node": snic,  # kernel counters: storage interface rx + tx
        "snic_bytes_per_node_hosts": list(NODE_HOSTS),
        "snic_max_over_avg": max(snic) / avg if avg > 0 else None,
        "compute_bytes_per_node": [delta[h]["compute"]["rx_bytes"] + delta[h]["compute"]
                                   ["tx_bytes"] for h in NODE_HOSTS],
    }
