"""`dualpath bench NAME`: every benchmark an issue names, one registry.

A benchmark module exposes `add_arguments(parser)` and `run(args) -> dict`; `run` prints its
own short table (progress goes to stderr) and returns the JSON object, which this module
writes to `--json PATH`. Modules are imported only when their benchmark runs.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any

from dualpath.bench.report import write_json

# name -> (module, one-line help). Modules import lazily.
BENCHMARKS: dict[str, tuple[str, str]] = {
    "store": ("dualpath.bench.store_bench", "KV file store throughput vs raw disk; prefill time with store hits"),
    "transfer": ("dualpath.bench.transfer_bench", "engine-to-engine transfer bytes/s vs a raw loopback socket"),
    "scheduler": ("dualpath.bench.scheduler_bench", "scheduler decision cost at 1,152 engines / 10,000 requests"),
    "storage-bound": ("dualpath.bench.storage_bound_online", "offline JCT (or --online capacity at SLO) of every --system on a storage-bound local cluster"),
    "vllm-storage-bound": ("dualpath.bench.vllm_storage_bound", "storage-bound basic vs dualpath JCT on vLLM instances with the DualPath connector; connector overhead vs plain vLLM"),
    "engine": ("dualpath.bench.engine_bench", "5-turn agents at 1 and 4 against dualpath serve vs transformers fp32"),
    "frontend": ("dualpath.bench.frontend_bench", "HTTP front-end requests/s and SmolLM2 TTFT/TPOT under load"),
    "sim-validate": ("dualpath.bench.sim_validate", "simulator vs the paper's published numbers"),
    "sim-scale": ("dualpath.bench.sim_scale", "simulator wall time and memory at cluster scale"),
    "sim-vs-runtime": ("dualpath.bench.sim_vs_runtime", "the storage-bound scenario on the live runtime and in the simulator"),
    "offline": ("dualpath.bench.offline", "offline (RL rollout) workload against a server or the simulator"),
    "online": ("dualpath.bench.online", "online (Poisson agents) workload against a server or the simulator"),
    "isolation": ("dualpath.bench.isolation", "MODEL-class p99 latency idle vs KV-saturated on the netns testbed (root)"),
    "compare": ("dualpath.bench.compare", "print the ratios of two result JSON files side by side"),
}


def register(sub: Any) -> None:
    parser = sub.add_parser("bench", help="run a benchmark and print / save its results")
    bench_sub = parser.add_subparsers(dest="bench_name", metavar="NAME")
    bench_sub.required = True
    for name, (module_name, help_text) in BENCHMARKS.items():
        p = bench_sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--json", metavar="PATH", help="write the result object to PATH")
        p.set_defaults(func=_runner(module_name))
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            p.set_defaults(func=_missing(name))
            continue
        module.add_arguments(p)


def _runner(module_name: str) -> Any:
    def run(args: argparse.Namespace) -> int:
        result = importlib.import_module(module_name).run(args)
        if args.json:
            write_json(args.json, result)
            print(f"wrote {args.json}")
        return 0

    return run


def _missing(name: str) -> Any:
    def run(args: argparse.Namespace) -> int:
        from dualpath.core.errors import UserInputError

        raise UserInputError(f"benchmark {name!r} is not implemented yet")

    return run
