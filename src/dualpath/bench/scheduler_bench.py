"""`dualpath bench scheduler`: decision cost of the global scheduler at the paper's scale.

What is measured: `GlobalScheduler.schedule(waiting, view)` on one core (the scheduler is
single-threaded; `--pin-cpu N` also pins the process to CPU N), timed with
`time.perf_counter_ns` around the call only, and with `time.thread_time_ns` (CPU time of
this thread, which excludes time the OS gave to other processes on a busy machine). Each call gets a fresh random cluster snapshot (`--prefill-nodes` +
`--decode-nodes` groups of `--engines-per-node` engines, loads drawn so that some prefill
engines are overloaded and some nodes are above α) and a fresh waiting queue of `--queue`
requests shaped like the 64K agentic trace. Per call, decision cost = call time / requests
placed; `decision_us_p50` / `decision_us_p99` are percentiles of that over all calls that
placed at least one request (`decision_cpu_us_*`: the same from CPU time). Building the `ClusterView` is the caller's work and is
reported separately (`view_build_us_p50`).

Hardware constants (defaults; each flag can override):
- KV bytes per token 40,016: DeepSeek-V3.2 MLA stores 656 bytes per token per layer (512
  FP8 latent + 16 bytes of scales + 64 BF16 RoPE dims) x 61 layers.
- Storage bandwidth 50e9 B/s per node: one 400 Gbps SNIC (DESIGN.md 4) -> α = 3 s of it.
- Prefill 9,212 tokens/s per GPU: DeepSeek's published V3/R1 inference-system figure of
  73.7k input tokens/s per H800 node in prefill (cache hits included), / 8 GPUs -> β = 5 s.
- Decode KV room 1,000,000 tokens per GPU: ~40 GB of an 80 GB H800 left for KV after the
  expert-parallel weight share and activations, / 40,016 bytes per token.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
import time
from typing import Any

from dualpath.bench.report import format_table, machine_info
from dualpath.core.errors import UserInputError
from dualpath.scheduler import (
    ClusterView,
    EngineState,
    GlobalScheduler,
    NodeState,
    RequestInfo,
    SchedulerConfig,
    alpha_tokens,
    beta_tokens,
)
from dualpath.scheduler.config import PLACEMENT_NAMES, READ_POLICY_NAMES
from dualpath.workload.metrics import percentile

log = logging.getLogger(__name__)

KV_BYTES_PER_TOKEN = 40_016
STORAGE_BANDWIDTH_BYTES_S = 50e9
PREFILL_TOKENS_PER_S = 9_212.0
DECODE_KV_CAPACITY_TOKENS = 1_000_000
# 64K agentic trace (DESIGN.md 1): append ~429 tokens/turn, generation ~176 tokens/turn,
# context up to 64K tokens.
APPEND_TOKENS_MEAN = 429
GENERATED_TOKENS_MEAN = 176
MAX_CONTEXT_TOKENS = 65_536


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prefill-nodes", type=int, default=48,
                        help="prefill groups (default 48; 48 + 96 = 144 groups, the 2P4D ratio)")
    parser.add_argument("--decode-nodes", type=int, default=96, help="decode groups (default 96)")
    parser.add_argument("--engines-per-node", type=int, default=8, help="engines per group (8)")
    parser.add_argument("--queue", type=int, default=10_000, help="waiting requests (10,000)")
    parser.add_argument("--calls", type=int, default=60, help="schedule calls measured (60)")
    parser.add_argument("--placement", choices=PLACEMENT_NAMES, default="dualpath")
    parser.add_argument("--read-policy", choices=READ_POLICY_NAMES, default="shorter-queue")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random snapshots")
    parser.add_argument("--pin-cpu", type=int, default=None, metavar="N",
                        help="pin the process to CPU N (default: no pinning)")


def run(args: argparse.Namespace) -> dict[str, Any]:
    for name in ("prefill_nodes", "decode_nodes", "engines_per_node", "queue", "calls"):
        if getattr(args, name) < 1:
            raise UserInputError(f"--{name.replace('_', '-')} must be >= 1")
    pinned = _pin(args.pin_cpu)
    alpha = alpha_tokens(STORAGE_BANDWIDTH_BYTES_S, KV_BYTES_PER_TOKEN)
    beta = beta_tokens(PREFILL_TOKENS_PER_S)
    sched = GlobalScheduler(SchedulerConfig(placement=args.placement,
                                            read_policy=args.read_policy,
                                            alpha_tokens=alpha, beta_tokens=beta))
    rng = random.Random(args.seed)
    per_request_us: list[float] = []
    per_request_cpu_us: list[float] = []
    call_ms: list[float] = []
    build_us: list[float] = []
    placed: list[int] = []
    sched.schedule(_queue(rng, 100), _view(rng, args, alpha, beta)[0])  # warm-up
    for _ in _progress(range(args.calls)):
        view, view_ns = _view(rng, args, alpha, beta)
        waiting = _queue(rng, args.queue)
        c0 = time.thread_time_ns()
        t0 = time.perf_counter_ns()
        result = sched.schedule(waiting, view)
        dt = time.perf_counter_ns() - t0
        dc = time.thread_time_ns() - c0
        n = len(result.placements)
        call_ms.append(dt / 1e6)
        build_us.append(view_ns / 1e3)
        placed.append(n)
        if n:
            per_request_us.append(dt / 1e3 / n)
            per_request_cpu_us.append(dc / 1e3 / n)
    engines = (args.prefill_nodes + args.decode_nodes) * args.engines_per_node
    out = {
        "benchmark": "scheduler",
        "placement": args.placement,
        "read_policy": args.read_policy,
        "groups": args.prefill_nodes + args.decode_nodes,
        "engines": engines,
        "queue_requests": args.queue,
        "calls": args.calls,
        "calls_with_placements": len(per_request_us),
        "alpha_tokens": alpha,
        "beta_tokens": beta,
        "decision_us_p50": percentile(per_request_us, 50),
        "decision_us_p99": percentile(per_request_us, 99),
        "decision_cpu_us_p50": percentile(per_request_cpu_us, 50),
        "decision_cpu_us_p99": percentile(per_request_cpu_us, 99),
        "call_ms_p50": percentile(call_ms, 50),
        "call_ms_p99": percentile(call_ms, 99),
        "placed_per_call_mean": sum(placed) / len(placed),
        "view_build_us_p50": percentile(build_us, 50),
        "pinned_cpu": pinned,
        "machine": machine_info(),
    }
    print(format_table(
        ["engines", "queue", "placed/call", "decision_us_p50", "decision_us_p99",
         "decision_cpu_us_p50", "call_ms_p50"],
        [[engines, args.queue, out["placed_per_call_mean"], out["decision_us_p50"],
          out["decision_us_p99"], out["decision_cpu_us_p50"], out["call_ms_p50"]]],
    ))
    return out


def _pin(cpu: int | None) -> int | None:
    """Pin this process to CPU `cpu` (None: leave it to the OS)."""
    if cpu is None:
        return None
    if not hasattr(os, "sched_setaffinity"):
        raise UserInputError("--pin-cpu: this OS cannot pin processes")
    if cpu not in os.sched_getaffinity(0):
        raise UserInputError(f"--pin-cpu: CPU {cpu} is not available to this process")
    os.sched_setaffinity(0, {cpu})
    return cpu


def _view(rng: random.Random, args: argparse.Namespace, alpha: int,
          beta: int) -> tuple[ClusterView, int]:
    """A random snapshot: ~1/5 of prefill engines above β, read queues around α."""
    t0 = time.perf_counter_ns()
    nodes: list[NodeState] = []
    engines: list[EngineState] = []
    eid = 0
    for nid in range(args.prefill_nodes + args.decode_nodes):
        prefill = nid < args.prefill_nodes
        nodes.append(NodeState(nid, "prefill" if prefill else "decode",
                               rng.randrange(0, 2 * alpha)))
        for _ in range(args.engines_per_node):
            if prefill:
                tok = rng.randrange(0, int(1.25 * beta))
                engines.append(EngineState(eid, nid, "prefill", tok // 30_000, tok, 0))
            else:
                tok = rng.randrange(0, int(0.8 * DECODE_KV_CAPACITY_TOKENS))
                engines.append(EngineState(eid, nid, "decode", tok // 30_000, tok,
                                           DECODE_KV_CAPACITY_TOKENS - tok))
            eid += 1
    view = ClusterView.build(engines, nodes)
    return view, time.perf_counter_ns() - t0


def _queue(rng: random.Random, n: int) -> list[RequestInfo]:
    """n requests shaped like turns of 64K agentic trajectories."""
    out = []
    for i in range(n):
        append = max(1, int(rng.expovariate(1.0 / APPEND_TOKENS_MEAN)))
        context = rng.randrange(0, MAX_CONTEXT_TOKENS - append)
        context -= context % 64  # the stored prefix is whole 64-token blocks
        out.append(RequestInfo(i, context + append, context, 0.0, GENERATED_TOKENS_MEAN))
    return out


def _progress(it: range) -> Any:
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a declared dependency
        return it
    return tqdm(it, desc="scheduler calls", file=sys.stderr, leave=False)
