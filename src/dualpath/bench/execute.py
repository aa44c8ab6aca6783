"""Run one workload on the chosen target (`--target http|sim`) and build its report."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable
from typing import Any

from dualpath.bench.driver import run_workload
from dualpath.bench.sim_hook import apply_cutoff, run_in_simulator
from dualpath.bench.target import Target
from dualpath.bench.workload_args import forbidden_ids
from dualpath.workload.metrics import SLO, TurnRecord, build_report
from dualpath.workload.tokens import TokenSource
from dualpath.workload.workload import Workload


def make_target(args: argparse.Namespace) -> Target:
    from dualpath.bench.http_target import HttpTarget

    return HttpTarget(args.url, model=args.served_model)


def execute(
    workload: Workload,
    args: argparse.Namespace,
    *,
    mode: str,
    slo: SLO,
    cutoff_s: float | None = None,
    target: Target | None = None,
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
    desc: str = "turns",
) -> tuple[list[TurnRecord], dict[str, Any]]:
    """(records, report). `target` overrides --target (tests pass fakes, with a
    virtual-time `loop_factory`)."""
    extra: dict[str, Any] = {"workload": dict(workload.info)}
    if target is None and args.target == "sim":
        args.cutoff_s = cutoff_s
        records, unfinished = apply_cutoff(run_in_simulator(workload, mode, args), cutoff_s, slo)
        extra["target"] = {"target": "sim", "system": args.system, "pd": args.pd,
                           "hardware": args.hardware, "model": args.model}
        mismatches = 0
    else:
        tgt = target if target is not None else make_target(args)
        tokens = None
        if tgt.needs_token_ids:
            tokens = TokenSource(args.vocab_size, forbidden_ids(args.forbidden_ids), args.seed)
        result = run_workload(tgt, workload, tokens=tokens, cutoff_s=cutoff_s, slo=slo,
                              progress=not args.no_progress, desc=desc,
                              loop_factory=loop_factory)
        records, unfinished = list(result.records), result.unfinished_turns
        mismatches = result.length_mismatches
        extra["target"] = tgt.describe()
    extra["length_mismatches"] = mismatches
    extra["cutoff_s"] = cutoff_s
    report = build_report(records, mode=mode, slo=slo, unfinished_turns=unfinished,
                          num_agents=len(workload.agents), extra=extra)
    return records, report
