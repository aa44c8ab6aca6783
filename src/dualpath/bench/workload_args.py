"""Flags shared by `dualpath bench offline` and `online`, and loading their trajectories."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from dualpath.core.errors import UserInputError
from dualpath.workload.generator import MAX_LENS, generate, parse_max_len
from dualpath.workload.loader import TRACE_FORMATS, load_trajectories
from dualpath.workload.metrics import SLO
from dualpath.workload.trajectory import Trajectory

# SmolLM2's tokenizer: vocabulary 49,152; ids 0-16 are its special tokens (<|endoftext|>,
# <|im_start|>, <|im_end|>, <repo_name>, ...), which random prompts must not contain.
DEFAULT_VOCAB_SIZE = 49_152
DEFAULT_FORBIDDEN_IDS = ",".join(str(i) for i in range(17))


def add_workload_arguments(p: argparse.ArgumentParser) -> None:
    w = p.add_argument_group("workload")
    w.add_argument("--trace", metavar="FILE", help="trace file (DualPath JSONL or Mooncake); "
                   "default: generate one with --max-len/--seed")
    w.add_argument("--trace-format", default="auto", choices=TRACE_FORMATS,
                   help="format of --trace (default: detect)")
    w.add_argument("--max-len", default="64k", help=f"generated trace: one of {', '.join(MAX_LENS)}")
    w.add_argument("--agents", type=int, default=None,
                   help="number of agents (offline default 8; trajectories are reused cyclically "
                   "when the trace is shorter)")
    w.add_argument("--seed", type=int, default=0, help="generator / arrival / token seed")
    w.add_argument("--scale", type=float, default=1.0,
                   help="multiply every append and generation length (fit a small model)")
    w.add_argument("--max-context", type=int, default=None,
                   help="drop each trajectory's turns from the first whose prompt + generation "
                   "exceeds this many tokens")
    t = p.add_argument_group("target")
    t.add_argument("--target", default="http", choices=["http", "sim"],
                   help="http: the OpenAI-compatible server at --url; sim: the simulator")
    t.add_argument("--url", default="http://127.0.0.1:8000", help="server base URL")
    t.add_argument("--served-model", default=None, help="model name in requests (default: "
                   "the first of GET /v1/models)")
    t.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB_SIZE,
                   help="prompt token ids are drawn from [0, vocab-size) (default: SmolLM2)")
    t.add_argument("--forbidden-ids", default=DEFAULT_FORBIDDEN_IDS,
                   help="comma-separated token ids never put in prompts (default: SmolLM2's "
                   "special tokens 0-16)")
    s = p.add_argument_group("simulator (passed through to dualpath.sim with --target sim)")
    s.add_argument("--system", default="dualpath", help="ablation rung (basic, layerwise, "
                   "dualpath-rr, dualpath, oracle)")
    s.add_argument("--pd", default=None, help="layout, e.g. 2P4D")
    s.add_argument("--hardware", default=None, help="hardware preset")
    s.add_argument("--model", default=None, help="model preset")
    o = p.add_argument_group("report")
    o.add_argument("--ttft-slo", type=float, default=4.0, help="TTFT objective, s (default 4)")
    o.add_argument("--tpot-slo", type=float, default=0.05, help="TPOT objective, s (default 0.05)")
    o.add_argument("--plot", metavar="DIR", default=None, help="write PNG figures into DIR")
    o.add_argument("--no-progress", action="store_true", help="no progress bar")


def slo_from_args(args: argparse.Namespace) -> SLO:
    return SLO(ttft_s=args.ttft_slo, tpot_s=args.tpot_slo)


def forbidden_ids(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserInputError(f"--forbidden-ids must be comma-separated integers, got {text!r}") from None


def trajectories_from_args(
    args: argparse.Namespace, default_agents: int
) -> tuple[list[Trajectory], dict[str, Any]]:
    """The trajectories to replay, after --scale and --max-context, and a report of what was
    done to them."""
    info: dict[str, Any] = {}
    if args.trace:
        trajs, source = load_trajectories(Path(args.trace), args.trace_format)
        info.update(source)
    else:
        key = parse_max_len(args.max_len)
        n = args.agents if args.agents is not None else default_agents
        trajs = generate(key, n, args.seed)
        info.update({"source": "generated", "max_len": key, "generator_seed": args.seed})
    if args.scale != 1.0:
        trajs = [t.scaled(args.scale) for t in trajs]
    info["scale"] = args.scale
    info["max_context"] = args.max_context
    if args.max_context is not None:
        if args.max_context < 2:
            raise UserInputError(f"--max-context must be >= 2, got {args.max_context}")
        kept: list[Trajectory] = []
        truncated = 0
        for t in trajs:
            cut = t.truncated(args.max_context)
            if cut is None:
                continue
            truncated += cut.num_turns < t.num_turns
            kept.append(cut)
        info["truncated_trajectories"] = truncated
        info["dropped_trajectories"] = len(trajs) - len(kept)
        if not kept:
            raise UserInputError(
                f"no trajectory has a first turn within --max-context {args.max_context}; "
                "use --scale to shrink the lengths"
            )
        trajs = kept
    return trajs, info
