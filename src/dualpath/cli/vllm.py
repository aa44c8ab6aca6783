"""`dualpath vllm serve`: DualPath on vLLM — P prefill + D decode vLLM instances with the
DualPath connector, and the DualPath router in front of them (OpenAI API at --host:--port).

Needs the separate vLLM environment (`make vllm-env`). The instances are child processes;
Ctrl-C / SIGTERM stops the router and then every instance.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("vllm", help="DualPath inside vLLM (connector + router)")
    vsub = p.add_subparsers(dest="vllm_command", metavar="COMMAND")
    vsub.required = True
    s = vsub.add_parser("serve", help="start vLLM prefill/decode instances and the router",
                        description=__doc__)
    s.add_argument("--prefill", type=int, default=1, help="prefill instances (1)")
    s.add_argument("--decode", type=int, default=2, help="decode instances (2)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--store-path", default="./kvstore-vllm", help="KV store root")
    s.add_argument("--run-dir", default=None, help="NIC / statistics files (/dev/shm/...)")
    s.add_argument("--system", default="dualpath", choices=("basic", "dualpath-rr", "dualpath"))
    s.add_argument("--read-path", default="auto", choices=("auto", "pe", "de"))
    s.add_argument("--snic-bandwidth", default=None, help="per-node storage NIC, e.g. 50MB/s")
    s.add_argument("--cnic-bandwidth", default=None, help="per-instance compute NIC")
    s.add_argument("--model-dir", default=None, help="HF model directory (make vllm-env's)")
    s.add_argument("--max-model-len", type=int, default=8192)
    s.add_argument("--kv-cache-gib", type=int, default=1, help="per instance, GiB (CPU)")
    s.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    s.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from dualpath.core.units import parse_bandwidth
    from dualpath.integrations.vllm.identity import model_config
    from dualpath.integrations.vllm.launch import DEFAULT_MODEL_DIR, LaunchConfig, VllmCluster
    from dualpath.integrations.vllm.router.__main__ import build_app

    run_dir = args.run_dir or f"/dev/shm/dualpath-vllm-{os.getpid()}"
    cfg = LaunchConfig(model_dir=args.model_dir or str(DEFAULT_MODEL_DIR),
                       store_path=args.store_path, run_dir=run_dir,
                       max_model_len=args.max_model_len, kv_cache_gib=args.kv_cache_gib,
                       device=args.device,
                       snic_bytes_s=parse_bandwidth(args.snic_bandwidth) if args.snic_bandwidth
                       else None,
                       cnic_bytes_s=parse_bandwidth(args.cnic_bandwidth) if args.cnic_bandwidth
                       else None)
    cluster = VllmCluster.build(cfg, args.prefill, args.decode)
    print(f"starting {args.prefill} prefill + {args.decode} decode vLLM instances "
          f"(logs in {run_dir}) ...", flush=True)
    with cluster:
        bpt = model_config(cfg.model_dir, cfg.dtype).kv_bytes_per_token
        spec_path = Path(run_dir) / "cluster.json"
        spec_path.write_text(cluster.cluster_spec(bpt).to_json())
        router_args = argparse.Namespace(cluster=str(spec_path), system=args.system,
                                         read_path=args.read_path, alpha_tokens=None,
                                         beta_tokens=None, no_kv_store=False)
        router = build_app(router_args)
        print(f"DualPath router on http://{args.host}:{args.port} (cluster {spec_path})",
              flush=True)
        web.run_app(router.app, host=args.host, port=args.port, print=None)
    return 0
