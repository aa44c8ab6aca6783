"""`python -m dualpath.integrations.vllm.router --cluster cluster.json [--read-path de] ...`

Serves the OpenAI API at --host:--port in front of the instances of `cluster.json`
(`cluster_spec.ClusterSpec`; `dualpath vllm serve` writes one). Runs in DualPath's own
environment; needs no vLLM.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from dualpath.core.errors import DualPathError
from dualpath.core.systems import READ_PATH_MODES, system_spec
from dualpath.integrations.vllm.identity import geometry_of, model_config
from dualpath.integrations.vllm.resources import InstanceStats
from dualpath.integrations.vllm.router.app import RouterApp
from dualpath.integrations.vllm.router.cluster_spec import ClusterSpec
from dualpath.integrations.vllm.router.placement import Planner
from dualpath.kv.open_store import open_store
from dualpath.scheduler import GlobalScheduler, scheduler_config_for_system

log = logging.getLogger(__name__)

ROUTER_SYSTEMS = ("basic", "dualpath-rr", "dualpath")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cluster", required=True, help="cluster spec JSON (instances, store, model)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--system", default="dualpath", choices=ROUTER_SYSTEMS,
                   help="placement + read policy: basic (round robin, PE reads only), "
                        "dualpath-rr, dualpath [default]")
    p.add_argument("--read-path", default="auto", choices=READ_PATH_MODES,
                   help="force a read side (pe / de) or let the scheduler choose (auto)")
    p.add_argument("--alpha-tokens", type=int, default=None, help="scheduler α (default: none)")
    p.add_argument("--beta-tokens", type=int, default=None, help="scheduler β (default: none)")
    p.add_argument("--no-kv-store", action="store_true", help="never report stored hits")


def build_app(args: argparse.Namespace) -> RouterApp:
    spec = ClusterSpec.load(args.cluster)
    cfg = model_config(spec.model_dir, spec.dtype)
    store = None
    if not args.no_kv_store:
        store = open_store(spec.store_path, geometry_of(cfg, spec.block_tokens))
    sched_cfg = scheduler_config_for_system(
        system_spec(args.system), read_path=args.read_path,
        alpha_tokens=args.alpha_tokens if args.alpha_tokens is not None else 1 << 62,
        beta_tokens=args.beta_tokens if args.beta_tokens is not None else 1 << 62)
    planner = Planner(spec.instances, GlobalScheduler(sched_cfg), store, spec.block_tokens,
                      cfg.identity)
    return RouterApp(planner, spec.served_model_name, _stats_reader(spec))


def _stats_reader(spec: ClusterSpec) -> Callable[[], Mapping[str, Mapping[str, float]]]:
    opened: dict[str, InstanceStats] = {}

    def read() -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for inst in spec.instances:
            path = Path(spec.run_dir) / f"stats-{inst.name}.counters"
            if inst.name not in opened and path.exists():
                opened[inst.name] = InstanceStats(path)
            if inst.name in opened:
                out[inst.name] = opened[inst.name].snapshot()
        return out

    return read


def main(argv: list[str] | None = None) -> int:
    from aiohttp import web

    p = argparse.ArgumentParser(prog="python -m dualpath.integrations.vllm.router",
                                description="DualPath router in front of vLLM instances")
    add_arguments(p)
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: "
                                                     "%(message)s")
    try:
        router = build_app(args)
    except DualPathError as exc:
        print(f"router: error: {exc}", file=sys.stderr)
        return 2
    web.run_app(router.app, host=args.host, port=args.port, print=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
