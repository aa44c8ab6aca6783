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
    p.add_argument("--max-running", "--max-num-seqs", type=int, default=None, metavar="N",
                   help="requests handed to the cluster at once; more wait in the queue "
                        "(default 256)")
    p.add_argument("--max-queue", type=int, default=None, metavar="N",
                   help="requests that may wait for a running slot before new ones get "
                        "HTTP 429 (default 1024)")
    p.add_argument("--drain-timeout-s", type=float, default=30.0,
                   help="on SIGTERM/Ctrl-C, wait this long for in-flight requests")
    g = p.add_argument_group("internal plane and remote nodes")
    g.add_argument("--internal-host", default=None,
                   help="address the engine control/KV plane binds (default 127.0.0.1; never "
                        "the public --host)")
    g.add_argument("--control-port", type=int, default=None,
                   help="port nodes join (default: any free port)")
    g.add_argument("--cluster-secret", default=None, metavar="FILE",
                   help="cluster secret file (created 0600 if missing; default: a fresh one "
                        "per run, or ./dualpath-cluster.secret with --accept-nodes)")
    g.add_argument("--accept-nodes", action="store_true",
                   help="let `dualpath node --join` agents add nodes while serving")
    g.add_argument("--remote-nodes", action="store_true",
                   help="start no local engines: wait for --prefill-nodes/--decode-nodes "
                        "nodes to join (implies --accept-nodes)")
    from dualpath.server.http_limits import add_http_arguments

    add_http_arguments(p)
    p.set_defaults(func=run)


def add_cluster_arguments(p: argparse.ArgumentParser) -> None:
    """Cluster shape and behaviour flags shared by `serve` and `bench storage-bound`."""
    p.add_argument("--config", default=None, metavar="FILE", help="TOML/JSON cluster config")
    p.add_argument("--model", default=None,
                   help="smollm2 (default), a random preset (tiny, small, ...), an HF dir or .gguf")
    p.add_argument("--store-path", default=None, help="KV store directory (default ./kvstore)")
    p.add_argument("--store-max-bytes", default=None, metavar="SIZE",
                   help="cap of the KV store, e.g. 2GB or 500MiB; least recently used leaf "
                        "blocks are evicted (default unbounded)")
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
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                   help="activations and KV dtype of the engines (default float32, the exact "
                        "reference; bfloat16 is ~2x faster on CPU)")
    p.add_argument("--quantization", choices=["none", "int8", "int4"], default=None,
                   help="weight-only quantized linear layers (default none; int4 runs a "
                        "GGUF's own Q4 weights)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per engine process (default 1)")
    p.add_argument("--kv-cache-bytes", default=None, metavar="SIZE",
                   help="KV pool of each decode engine, e.g. 512MiB (default 1GiB)")
    p.add_argument("--transfer", choices=["zmq", "mooncake"], default=None,
                   help="KV transfers between engines: zmq over TCP with CURVE (default) or "
                        "Mooncake's transfer engine (pip install "
                        "mooncake-transfer-engine-non-cuda; apt-get install libibverbs1)")
    p.add_argument("--mooncake-protocol", choices=["tcp", "rdma"], default=None,
                   help="Mooncake's protocol with --transfer mooncake (default tcp)")
    p.add_argument("--mooncake-device", default=None, metavar="NAME",
                   help="RDMA device for --mooncake-protocol rdma, e.g. mlx5_0")


def cluster_config(args: argparse.Namespace, **extra: Any) -> Any:
    from dualpath.core.config import ClusterConfig
    from dualpath.core.units import parse_bandwidth, parse_bytes

    overrides: dict[str, Any] = dict(
        model=args.model, store_path=args.store_path, system=args.system,
        read_path=args.read_path, prefill_nodes=args.prefill_nodes,
        decode_nodes=args.decode_nodes, engines_per_node=args.engines_per_node,
        block_size=args.block_size, model_seed=args.seed, dtype=args.dtype,
        quantization=args.quantization, threads=args.threads,
        decode_kv_bytes=parse_bytes(args.kv_cache_bytes) if args.kv_cache_bytes else None,
        snic_bytes_s=parse_bandwidth(args.snic_bandwidth) if args.snic_bandwidth else None,
        cnic_bytes_s=parse_bandwidth(args.cnic_bandwidth) if args.cnic_bandwidth else None,
        transfer=getattr(args, "transfer", None),
        mooncake_protocol=getattr(args, "mooncake_protocol", None),
        mooncake_device=getattr(args, "mooncake_device", None),
        store_max_bytes=(parse_bytes(args.store_max_bytes)
                         if getattr(args, "store_max_bytes", None) else None),
    )
    if args.no_kv_store:
        overrides["use_kv_store"] = False
    overrides.update(extra)
    return ClusterConfig.load(args.config, **overrides)


def run(args: argparse.Namespace) -> int:
    from dualpath.core.errors import UserInputError
    from dualpath.runtime.cluster import LocalCluster
    from dualpath.server.http_limits import http_limits_from_args
    from dualpath.server.run import run_server

    if args.max_queue is not None and args.max_queue < 0:
        raise UserInputError(f"--max-queue must be >= 0, got {args.max_queue}")
    limits = http_limits_from_args(args)
    remote = args.accept_nodes or args.remote_nodes
    secret = args.cluster_secret or ("dualpath-cluster.secret" if remote else None)
    config = cluster_config(args, host=args.host, port=args.port, api_key=args.api_key,
                            served_model_name=args.served_model_name,
                            max_running_requests=args.max_running,
                            max_waiting_requests=args.max_queue or None,
                            internal_host=args.internal_host, control_port=args.control_port,
                            cluster_secret_path=secret, accept_nodes=True if remote else None,
                            local_engines=False if args.remote_nodes else None)
    print(f"starting DualPath cluster: {config.prefill_nodes}P{config.decode_nodes}D x "
          f"{config.engines_per_node} engine(s), model {config.model}, system {config.system}, "
          f"store {config.store_path if config.use_kv_store else '(disabled)'} ...", flush=True)
    backend = LocalCluster(config)
    # The flags (or the config's fields) are passed on explicitly, so they bound the server's
    # admission whatever limits the cluster itself reports.
    run_server(backend, host=config.host, port=config.port, api_key=config.api_key,
               max_queue=args.max_queue if args.max_queue is not None
               else config.max_waiting_requests,
               max_running=config.max_running_requests,
               served_model_name=config.served_model_name,
               drain_timeout_s=args.drain_timeout_s, http_limits=limits,
               announce=lambda text: print(text, flush=True))
    return 0
