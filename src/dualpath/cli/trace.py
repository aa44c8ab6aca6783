"""`dualpath trace`: generate agentic traces, import Mooncake traces, print trace statistics.

    dualpath trace generate --max-len 64k --agents 1000 --seed 0 --out t.jsonl
    dualpath trace import mooncake.jsonl --out t.jsonl [--format mooncake-session]
    dualpath trace stats t.jsonl [--json stats.json]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from dualpath.core.errors import UserInputError


def register(sub: Any) -> None:
    parser = sub.add_parser("trace", help="generate / import agentic traces and print their statistics")
    tsub = parser.add_subparsers(dest="trace_command", metavar="ACTION")
    tsub.required = True

    g = tsub.add_parser("generate", help="generate trajectories matching the published traces")
    g.add_argument("--max-len", default="64k", help="trace max length: 32k, 48k or 64k")
    g.add_argument("--agents", type=int, default=1000, help="number of trajectories")
    g.add_argument("--seed", type=int, default=0, help="random seed")
    g.add_argument("--out", required=True, metavar="FILE", help="output trace (JSONL)")
    g.set_defaults(func=_generate)

    i = tsub.add_parser("import", help="convert a Mooncake trace into a DualPath trace")
    i.add_argument("input", metavar="FILE", help="Mooncake JSONL trace")
    i.add_argument("--format", default="auto", choices=["auto", "mooncake", "mooncake-session"],
                   help="auto: sessions iff requests carry session_id")
    i.add_argument("--out", required=True, metavar="FILE", help="output trace (JSONL)")
    i.set_defaults(func=_import)

    s = tsub.add_parser("stats", help="print a trace's turns / append / gen / total / context means")
    s.add_argument("input", metavar="FILE", help="trace (DualPath or Mooncake)")
    s.add_argument("--format", default="auto",
                   choices=["auto", "dualpath", "mooncake", "mooncake-session"])
    s.add_argument("--json", metavar="PATH", help="write the statistics as JSON")
    s.set_defaults(func=_stats)


def _generate(args: argparse.Namespace) -> int:
    from dualpath.workload.generator import generate, parse_max_len
    from dualpath.workload.trace_file import write_trace

    key = parse_max_len(args.max_len)
    if args.agents < 1:
        raise UserInputError(f"--agents must be >= 1, got {args.agents}")
    trajs = generate(key, args.agents, args.seed)
    n = write_trace(args.out, trajs, meta={"generator": "dualpath.workload.generator",
                                           "max_len": key, "seed": args.seed})
    print(f"wrote {n} trajectories to {args.out}")
    return 0


def _import(args: argparse.Namespace) -> int:
    from dualpath.workload.mooncake import import_mooncake
    from dualpath.workload.trace_file import write_trace

    session = None if args.format == "auto" else args.format == "mooncake-session"
    result = import_mooncake(Path(args.input), session=session)
    n = write_trace(args.out, result.trajectories,
                    meta={"source": args.input, "format": args.format,
                          "num_requests": result.num_requests,
                          "adjusted_turns": result.adjusted_turns})
    print(f"imported {result.num_requests} requests as {n} trajectories into {args.out}"
          + (f" ({result.adjusted_turns} turns adjusted)" if result.adjusted_turns else ""))
    return 0


def _stats(args: argparse.Namespace) -> int:
    from dualpath.bench.report import format_table, write_json
    from dualpath.workload.loader import load_trajectories
    from dualpath.workload.stats import trace_stats

    trajs, info = load_trajectories(Path(args.input), args.format)
    stats = trace_stats(trajs)
    print(format_table(["statistic", "value"], [(k, v) for k, v in stats.items()]))
    if args.json:
        write_json(args.json, {**stats, "trace": info})
        print(f"wrote {args.json}")
    return 0
