"""`dualpath serve`: start a local DualPath cluster behind the OpenAI-compatible API.

Defaults: 1 prefill node + 2 decode nodes of one engine each, SmolLM2-135M-Instruct, the file
KV store under ./kvstore (survives restarts), 127.0.0.1:8000. Options come from defaults, then
`--config FILE` (TOML or JSON with ClusterConfig field names), then flags.
"""

from __future__ import annotations

import argparse
from typing import Any

from dualpath.core.systems import READ_PATH_MODES, SYSTEM_NAMES


def register(sub: Any) -> None:
    p = sub.add_parser("serve", help="start a local cluster serving the OpenAI-compatible API",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_cluster_arguments(p)
    p.add_argument("--host", default=None, help="listen address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="listen port (default 8000; 0 = any)")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY'")
    p.add_argument("--served-model-name", default=None, help="model id clients use")
    p.add_argument("--max-queue", type=int, default=None,
                   help="requests that may wait before new ones get HTTP 429 (default 1024)")
    p.add_argument("--drain-timeout-s", type=float, default=30.0,
                   help="on SIGTERM/Ctrl-C, wait this long for in-flight requests")
    p.set_defaults(func=run)


def add_cluster_arguments(p: argparse.ArgumentParser) -> None:
    """Cluster shape and behaviour flags shared by `serve` and `bench storage-bound`."""
    p.add_argument("--config", default=None, metavar="FILE", help="TOML/JSON cluster config")
    p.add_argument("--model", default=None,
                   help="smollm2 (default), a random preset (tiny, small, ...), an HF dir or .gguf")
    p.add_argument("--store-path", default=None, help="KV store directory (default ./kvstore)")
    p.add_argument("--no-kv-store", action="store_true",
                   help="never load KV from the store: recompute every prompt")
    p.add_argument("--system", choices=SYSTEM_NAMES, default=None,
                   help="ablation rung (default dualpath)")
    p.add_argument("--read-path", choices=READ_PATH_MODES, default=None,
                   help="force the read path (default auto = the scheduler decides)")
    p.add_argument("--prefill-nodes", type=int, default=None)
    p.add_argument("--decode-nodes", type=int, default=None)
    p.add_argument("--engines-per-node", type=int, default=None)
    p.add_argument("--block-size", type=int, default=None, help="tokens per KV block (64)")
    p.add_argument("--snic-bandwidth", default=None, metavar="RATE",
                   help="per-node storage NIC, e.g. 200MB/s or 400Gbps (default unlimited)")
    p.add_argument("--cnic-bandwidth", default=None, metavar="RATE",
                   help="per-engine compute NIC (default unlimited)")
    p.add_argument("--seed", type=int, default=None, help="weights seed of random presets")


def cluster_config(args: argparse.Namespace, **extra: Any) -> Any:
    from dualpath.core.config import ClusterConfig
    from dualpath.core.units import parse_bandwidth

    overrides: dict[str, Any] = dict(
        model=args.model, store_path=args.store_path, system=args.system,
        read_path=args.read_path, prefill_nodes=args.prefill_nodes,
        decode_nodes=args.decode_nodes, engines_per_node=args.engines_per_node,
        block_size=args.block_size, model_seed=args.seed,
        snic_bytes_s=parse_bandwidth(args.snic_bandwidth) if args.snic_bandwidth else None,
        cnic_bytes_s=parse_bandwidth(args.cnic_bandwidth) if args.cnic_bandwidth else None,
    )
    if args.no_kv_store:
        overrides["use_kv_store"] = False
    overrides.update(extra)
    return ClusterConfig.load(args.config, **overrides)


def run(args: argparse.Namespace) -> int:
    from dualpath.runtime.cluster import LocalCluster
    from dualpath.server.run import run_server

    config = cluster_config(args, host=args.host, port=args.port, api_key=args.api_key,
                            served_model_name=args.served_model_name)
    print(f"starting DualPath cluster: {config.prefill_nodes}P{config.decode_nodes}D x "
          f"{config.engines_per_node} engine(s), model {config.model}, system {config.system}, "
          f"store {config.store_path if config.use_kv_store else '(disabled)'} ...", flush=True)
    backend = LocalCluster(config)
    run_server(backend, host=config.host, port=config.port, api_key=config.api_key,
               max_queue=args.max_queue, served_model_name=config.served_model_name,
               drain_timeout_s=args.drain_timeout_s,
               announce=lambda text: print(text, flush=True))
    return 0
