"""Entry points: `simulate` (one run, the CLI's unit) and `run_workload` (the hook of
`dualpath bench offline|online --target sim`)."""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

from dualpath.sim.config import SimConfig, parse_pd
from dualpath.sim.hardware import HardwareSpec, load_hardware
from dualpath.sim.model_cost import ModelCost
from dualpath.sim.report import sim_report, ttft_breakdown, turn_records
from dualpath.sim.simulator import Simulator
from dualpath.workload.metrics import TurnRecord

# DESIGN.md section 4: default layouts per model.
DEFAULT_PD: dict[str, tuple[int, int]] = {"ds-660b": (2, 4), "qwen-32b": (1, 2), "ds-27b": (1, 1)}
DEFAULT_MODEL = "ds-660b"

# (arrival_s, [(append, gen), ...]) or, when the first append's content is named by hash
# ids (Mooncake traces), (arrival_s, turns, (hash_ids, tokens per hash id)).
AgentTurns = tuple[Any, ...]


@dataclass(frozen=True)
class SimRun:
    """One finished simulation: its config, per-turn records and JSON report."""

    config: SimConfig
    records: list[TurnRecord]
    report: dict[str, Any]


def agents_from_workload(workload: Any) -> tuple[list[AgentTurns], list[int]]:
    """`AgentTurns` per agent of a `dualpath.workload.Workload` (with its hash ids, if any,
    so shared prefixes hit in the simulator as they do in the HTTP target)."""
    agents: list[AgentTurns] = []
    ids: list[int] = []
    for a in workload.agents:
        traj = a.trajectory
        turns = [(t.append_tokens, t.gen_tokens) for t in traj.turns]
        if traj.prefix_hash_ids:
            agents.append((float(a.arrival_s), turns, (tuple(traj.prefix_hash_ids), traj.hash_block_tokens)))
        else:
            agents.append((float(a.arrival_s), turns))
        ids.append(int(a.agent_id))
    return agents, ids


def simulate(config: SimConfig, agents: list[AgentTurns], *, agent_ids: list[int] | None = None,
             hardware: HardwareSpec | None = None, progress: bool = False,
             model: ModelCost | None = None) -> SimRun:
    """Run one configuration on the given agents; deterministic for a given input.

    progress: a bar of finished turns on stderr (only when stderr is a terminal).
    model: a cost preset outside `MODEL_PRESETS` (None: `config.model`'s).
    """
    with no_cyclic_gc(), _progress_bar(progress, config.system) as bar:
        t0 = time.perf_counter()
        sim = Simulator(config, agents, hardware, model, agent_ids=agent_ids,
                        keep_requests=False)
        sim.run(progress=bar)
        wall = time.perf_counter() - t0
        breakdown = ttft_breakdown(sim)
        records = turn_records(sim, release=True)
        report = sim_report(sim, records, mode=config.mode, wall_s=wall, num_agents=len(agents),
                            breakdown=breakdown)
    return SimRun(config, records, report)


@contextmanager
def _progress_bar(enabled: bool, label: str) -> Iterator[Callable[[int, int, float], None] | None]:
    """A tqdm bar over finished turns (silent when stderr is not a terminal)."""
    if not enabled:
        yield None
        return
    from tqdm import tqdm

    with tqdm(desc=f"simulating {label}", unit="turn", file=sys.stderr, disable=None,
              leave=False) as bar:

        def update(done: int, total: int, now_s: float) -> None:
            bar.total = total
            bar.n = done
            bar.set_postfix_str(f"t={now_s:.0f}s simulated", refresh=False)
            bar.refresh()

        yield update


@contextmanager
def no_cyclic_gc() -> Iterator[None]:
    """Pause Python's cyclic garbage collector (reference counting still frees everything).

    A run allocates millions of long-lived objects (turns, records) that form no garbage
    cycles; the collector's repeated full passes over them took about half of the CPU time
    at 48P96D (measured: 145 s -> 76 s for the first 300 simulated seconds).
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def config_from_args(args: argparse.Namespace, mode: str) -> SimConfig:
    """A SimConfig from the pass-through flags (--system, --pd, --model, --hardware, ...)."""
    model = getattr(args, "model", None) or DEFAULT_MODEL
    pd_text = getattr(args, "pd", None)
    pd = parse_pd(pd_text) if pd_text else DEFAULT_PD.get(model, (2, 4))
    cutoff = getattr(args, "cutoff_s", None)
    cfg = SimConfig(
        model=model, hardware=getattr(args, "hardware", None),
        system=getattr(args, "system", None) or "dualpath", pd=pd, mode=mode,
        aps=float(getattr(args, "aps", None) or 1.0), seed=int(getattr(args, "seed", 0) or 0),
        read_path=getattr(args, "read_path", None) or "auto",
        split_reads=bool(getattr(args, "split_reads", False)),
        log_decisions=bool(getattr(args, "log_decisions", False)),
    )
    if cutoff is not None:
        cfg = replace(cfg, max_sim_s=float(cutoff))
    interval = getattr(args, "sched_interval", None)
    if interval is not None:
        cfg = replace(cfg, sched_interval_s=float(interval))
    return cfg


def run_workload(workload: Any, mode: str, args: argparse.Namespace) -> list[TurnRecord]:
    """The `--target sim` hook: simulate the workload's agents, return finished turns."""
    cfg = config_from_args(args, mode)
    agents, ids = agents_from_workload(workload)
    hw = load_hardware(cfg.hardware)
    return simulate(cfg, agents, agent_ids=ids, hardware=hw).records
