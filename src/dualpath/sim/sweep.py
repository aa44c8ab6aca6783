"""`--sweep KEY=V1,V2,...`: many configurations in a process pool, one plot.

KEY is `pd` (layouts such as 1P4D,2P4D), `snic` (SNIC line rate in Gbps) or `agents`.
Each (value, system) pair is one independent run; runs are spread over all cores.
"""

from __future__ import annotations

import os
from dataclasses import replace
from multiprocessing import get_context
from typing import Any

from dualpath.core.errors import UserInputError
from dualpath.sim.api import AgentTurns, simulate
from dualpath.sim.config import SimConfig, parse_pd
from dualpath.sim.hardware import HardwareSpec

SWEEP_KEYS = ("pd", "snic", "agents")


def parse_sweep(text: str) -> tuple[str, list[str]]:
    key, sep, values = text.partition("=")
    key = key.strip()
    if not sep or key not in SWEEP_KEYS or not values.strip():
        raise UserInputError(f"--sweep must be KEY=V1,V2,... with KEY one of {', '.join(SWEEP_KEYS)}; got {text!r}")
    vals = [v.strip() for v in values.split(",") if v.strip()]
    for v in vals:
        if key == "pd":
            parse_pd(v)
        else:
            try:
                if float(v) <= 0:
                    raise ValueError
            except ValueError:
                raise UserInputError(f"--sweep {key}: {v!r} is not a positive number") from None
    return key, vals


def _one(job: tuple[str, str, SimConfig, list[AgentTurns], HardwareSpec]) -> dict[str, Any]:
    key, value, cfg, agents, hw = job
    if key == "pd":
        cfg = replace(cfg, pd=parse_pd(value))
    elif key == "snic":
        hw = replace(hw, snic_bytes_s=float(value) * 1e9 / 8)
    elif key == "agents":
        agents = agents[: int(float(value))]
    run = simulate(cfg, agents, hardware=hw)
    r = run.report
    return {"value": value, "system": cfg.system, "jct_s": r["jct_s"],
            "throughput_tok_s": r["throughput_tok_s"], "ttft_s_p50": r["ttft_s_p50"],
            "snic_max_over_avg": r["snic_max_over_avg"], "unfinished_turns": r["unfinished_turns"]}


def run_sweep(key: str, values: list[str], configs: list[SimConfig], agents: list[AgentTurns],
              hw: HardwareSpec, processes: int | None = None) -> list[dict[str, Any]]:
    """JCT etc. for every (value, config); agents must hold enough for the largest `agents`."""
    jobs = [(key, v, replace(c, timeline_bin_s=None), agents, hw) for v in values for c in configs]
    n = min(len(jobs), processes or os.cpu_count() or 1)
    if n <= 1:
        return [_one(j) for j in jobs]
    with get_context("spawn").Pool(n) as pool:
        return list(pool.map(_one, jobs, chunksize=1))
