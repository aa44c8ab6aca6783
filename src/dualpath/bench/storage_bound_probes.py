"""Live runs of the storage-bound scenario for the online capacity search: the warm store,
one long-lived cluster per system, the unloaded calibration and the online probes.

Agent i always runs trajectory i of the scenario (`storage_bound.build_workload`: 64K-style,
scaled, resumed mid-trajectory), so its context is in the warm store whatever the arrival
rate. The warm store is built once, up front, on an unlimited-NIC `dualpath` cluster (not
timed), for as many agents as the highest rate the search may probe brings; every system's
cluster then opens its own byte-identical copy. Under `--work-dir` the warm store is kept
(`warm-<key>/`, the key naming what its contents depend on) and a later run reuses it: the
warm-up prefills every context from scratch, minutes on a loaded 2-core machine.

A cluster start costs 20-30 s on a loaded 2-core machine, so each system keeps one cluster
for its calibration and all its probes instead of one per probe. Two things keep a probe on a
reused cluster equal to one on a fresh cluster:
- every run draws its later turns' appends under its own salt (`RunTokens`): turn 0 is the
  warm context, as in the warm-up, so it reads exactly the warm KV; turns 1.. read only the
  blocks this same run wrote. Nothing an earlier run stored is ever a hit;
- a run starts only once the cluster is idle (no live request, empty read queues and
  buffers), so a probe cut off while overloaded leaves nothing behind.
Bytes per path are the deltas of the engines' cumulative counters over the run.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import math
import os
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from dualpath.bench import storage_bound
from dualpath.bench.driver import RunResult
from dualpath.core.errors import EngineError, UserInputError
from dualpath.workload.metrics import SLO, TurnRecord, build_report
from dualpath.workload.tokens import TokenSource
from dualpath.workload.trajectory import Trajectory
from dualpath.workload.workload import AgentSpec, Workload, poisson_arrivals

log = logging.getLogger(__name__)

PATH_COUNTERS = ("bytes_read_pe_path", "bytes_read_de_path")
WARM_DONE = "warm-complete.json"  # written into a warm store once its warm-up finished


@dataclass(frozen=True)
class Scenario:
    """The storage-bound scenario of `dualpath bench storage-bound`, as the online search runs
    it. `arrival_seed` seeds the Poisson arrivals (the same at a given rate for every system)."""

    model: str
    max_len: str
    scale: float
    turns: int
    seed: int
    snic_bytes_s: float
    cnic_bytes_s: float
    arrival_seed: int
    probe_duration_s: float
    probe_drain_s: float
    min_agents: int = 4

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "layout": "1P2D"}

    def warm_key(self, num_agents: int) -> str:
        """Names a warm store: what its contents depend on (the agents' trajectories and
        token contents, the model), not the NIC rates or the probes."""
        key = f"{self.model}|{self.max_len}|{self.scale}|{self.turns}|{self.seed}|{num_agents}"
        return hashlib.blake2b(key.encode(), digest_size=6).hexdigest()

    def arrival_times_s(self, aps: float) -> list[float]:
        """Poisson arrivals at `aps` within the probe window, or the first `min_agents` of
        them when the window holds fewer (a low rate's probe still measures something)."""
        window = poisson_arrivals(aps, random.Random(self.arrival_seed),
                                  duration_s=self.probe_duration_s)
        if len(window) >= self.min_agents:
            return window
        return poisson_arrivals(aps, random.Random(self.arrival_seed), count=self.min_agents)

    def agents_at(self, aps: float) -> int:
        """Agents of a probe at `aps` (non-decreasing in aps: the same seed gives the same
        exponential gaps, scaled by 1/aps)."""
        return len(self.arrival_times_s(aps))

    def trajectories(self, n: int) -> tuple[list[Trajectory], list[Trajectory]]:
        """(warm-up, measured) trajectories of agents 0..n-1."""
        ns = argparse.Namespace(agents=n, turns=self.turns, max_len=self.max_len,
                                scale=self.scale, seed=self.seed)
        warm, measured = storage_bound.build_workload(ns)
        return [a.trajectory for a in warm.agents], [a.trajectory for a in measured.agents]


class RunTokens(TokenSource):
    """Token contents of one run: turn 0 as in the warm-up (the warm context), every later
    append drawn under the run's `salt`, so no run ever hits blocks another run stored."""

    def __init__(self, vocab_size: int, forbidden_ids: Any, salt: str, seed: int = 0) -> None:
        super().__init__(vocab_size, forbidden_ids=forbidden_ids, seed=seed)
        self.salt = salt

    def turn_append(self, trajectory: Trajectory, agent_key: str, turn_index: int) -> list[int]:
        if turn_index == 0:
            return super().turn_append(trajectory, agent_key, turn_index)
        n = trajectory.turns[turn_index].append_tokens
        return self.append(f"{agent_key}@{self.salt}", turn_index, n)


def load_avg_1m() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def _config(scenario: Scenario, system: str, store: Path, shaped: bool) -> Any:
    cfg = replace(storage_bound.cluster_config(scenario.model, store), system=system)
    if shaped:
        cfg = replace(cfg, snic_bytes_s=scenario.snic_bytes_s, cnic_bytes_s=scenario.cnic_bytes_s)
    return cfg


async def warm_store(scenario: Scenario, root: Path, warm: list[Trajectory]) -> None:
    """Persist the contexts of the given agents into `root` (unlimited NICs, not timed)."""
    from dualpath.bench.cluster_target import ClusterTarget
    from dualpath.bench.driver import run_workload_async
    from dualpath.runtime.cluster import LocalCluster

    shutil.rmtree(root, ignore_errors=True)
    print(f"warm-up: contexts of {len(warm)} agents into {root}", file=sys.stderr)
    cluster = LocalCluster(_config(scenario, "dualpath", root, shaped=False))
    await cluster.start()
    try:
        tokens = TokenSource(cluster.model_config.vocab_size,
                             forbidden_ids=cluster.tokenizer.eos_token_ids, seed=0)
        agents = tuple(AgentSpec(i, t, 0.0) for i, t in enumerate(warm))
        await run_workload_async(ClusterTarget(cluster), Workload(agents), tokens=tokens,
                                 progress=True, desc="warm-up")
    finally:
        await cluster.shutdown()


class LiveSystem:
    """One system's shaped cluster on its own copy of the warm store, for a whole search."""

    def __init__(self, scenario: Scenario, system: str, store: Path,
                 measured: list[Trajectory]) -> None:
        self.scenario = scenario
        self.system = system
        self.store = store
        self.measured = measured
        self._cluster: Any = None
        self._salts: set[str] = set()

    async def start(self) -> None:
        from dualpath.runtime.cluster import LocalCluster

        self._cluster = LocalCluster(_config(self.scenario, self.system, self.store, shaped=True))
        await self._cluster.start()

    async def shutdown(self) -> None:
        if self._cluster is not None:
            await self._cluster.shutdown()
            self._cluster = None

    def _tokens(self, salt: str) -> RunTokens:
        while salt in self._salts:  # a rate probed twice must still read only its own blocks
            salt += "'"
        self._salts.add(salt)
        c = self._cluster
        return RunTokens(c.model_config.vocab_size, c.tokenizer.eos_token_ids, salt)

    async def wait_idle(self, timeout_s: float = 120.0) -> None:
        """Until no request is live and every read queue and buffer is empty (mutates
        nothing). Engines report every few hundred ms, so the state must hold twice."""
        deadline = time.monotonic() + timeout_s
        quiet = 0
        while quiet < 2:
            m = self._cluster.metrics_snapshot()
            idle = (self._cluster.books.num_live == 0
                    and not any(m.read_queue_tokens.values())
                    and not any(m.buffer_bytes_in_use.values()))
            quiet = quiet + 1 if idle else 0
            if time.monotonic() > deadline:
                raise EngineError(f"{self.system}: the cluster did not drain in {timeout_s} s")
            await asyncio.sleep(0.5)

    def _path_bytes(self) -> dict[str, float]:
        counters = self._cluster.counters().values()
        return {k: float(sum(c.get(k, 0.0) for c in counters)) for k in PATH_COUNTERS}

    async def run(self, workload: Workload, salt: str, *, desc: str, slo: SLO | None = None,
                  cutoff_s: float | None = None) -> tuple[RunResult, dict[str, float]]:
        """One run on the idle cluster; its result and the bytes it read per path."""
        from dualpath.bench.cluster_target import ClusterTarget
        from dualpath.bench.driver import run_workload_async

        await self.wait_idle()
        before = self._path_bytes()
        kwargs: dict[str, Any] = {} if slo is None else {"slo": slo}
        result = await run_workload_async(ClusterTarget(self._cluster), workload,
                                          tokens=self._tokens(salt), cutoff_s=cutoff_s,
                                          progress=True, desc=desc, **kwargs)
        await self.wait_idle()
        await asyncio.sleep(0.8)  # the engines' last counter reports
        after = self._path_bytes()
        return result, {k: after[k] - before[k] for k in PATH_COUNTERS}

    async def calibrate(self, agent: int) -> list[TurnRecord]:
        """Every turn of one agent alone in the cluster: this system's unloaded TTFT and
        TPOT (the caller interleaves agents and systems)."""
        if not 0 <= agent < len(self.measured):
            raise UserInputError(f"--calibration-agents must be at most {len(self.measured)}")
        workload = Workload((AgentSpec(agent, self.measured[agent], 0.0),))
        result, _ = await self.run(workload, f"calibrate{agent}",
                                   desc=f"{self.system} unloaded agent {agent}")
        return list(result.records)

    async def probe(self, aps: float, slo: SLO) -> dict[str, Any]:
        """One online run: Poisson arrivals at `aps` for the probe window (at least
        `min_agents` of them), cut off a drain time after the window or the last arrival (a turn in flight longer than the TTFT objective then counts as a miss)."""
        s = self.scenario
        times = s.arrival_times_s(aps)
        n = len(times)
        if not 1 <= n <= len(self.measured):
            raise UserInputError(f"{aps:.4g} APS brings {n} agents, {len(self.measured)} "
                                 "were warmed (the rate must be within --max-aps)")
        workload = Workload(tuple(AgentSpec(i, t, at) for i, (t, at)
                                  in enumerate(zip(self.measured, times, strict=False))),
                            {"mode": "online", "aps": aps, "num_agents": n})
        load_before = load_avg_1m()
        result, path_bytes = await self.run(
            workload, f"aps{aps:.6g}", desc=f"{self.system} {aps:.3g} APS", slo=slo,
            cutoff_s=max(s.probe_duration_s, times[-1]) + s.probe_drain_s)
        report = build_report(result.records, mode="online", slo=slo,
                              unfinished_turns=result.unfinished_turns, num_agents=n)
        report.update({"aps": aps, **path_bytes, "length_mismatches": result.length_mismatches,
                       "load_avg_1m": [load_before, load_avg_1m()]})
        print(f"  {self.system} {aps:.4g} APS: {n} agents, {report['num_turns']} turns "
              f"(+{result.unfinished_turns} late), attainment {report['slo_attainment']:.3f}, "
              f"TTFT p50/p99 {report['ttft_s_p50']:.3g}/{report['ttft_s_p99']:.3g} s, "
              f"TPOT p50 {report['tpot_s_p50'] * 1e3:.3g} ms, load {load_before}",
              file=sys.stderr)
        return report


def unloaded_slo(calibration: dict[str, list[TurnRecord]], factor: float,
                 tpot_factor: float | None = None) -> tuple[SLO, dict[str, Any]]:
    """SLO = factor x the unloaded median, the larger of the systems' medians for each of TTFT
    and TPOT (so every system meets it when alone); `tpot_factor` (default `factor`) scales the
    TPOT one. Returns the SLO and how it was derived."""
    from dualpath.workload.metrics import percentile

    tpot_factor = factor if tpot_factor is None else tpot_factor
    if not factor > 0:
        raise UserInputError(f"--slo-factor must be > 0, got {factor}")
    if not tpot_factor > 0:
        raise UserInputError(f"--slo-tpot-factor must be > 0, got {tpot_factor}")
    per_system: dict[str, dict[str, float]] = {}
    for system, records in calibration.items():
        tpots = [v for v in (r.tpot_s for r in records) if v is not None]
        if not records or not tpots:
            raise UserInputError(f"calibration of {system} produced no timed turns")
        per_system[system] = {"ttft_s_p50": percentile([r.ttft_s for r in records], 50),
                              "tpot_s_p50": percentile(tpots, 50), "num_turns": len(records)}
    if not per_system:
        raise UserInputError("no system to calibrate the SLO on")
    ttft = max(v["ttft_s_p50"] for v in per_system.values())
    tpot = max(v["tpot_s_p50"] for v in per_system.values())
    if not (math.isfinite(ttft) and math.isfinite(tpot) and ttft > 0 and tpot > 0):
        raise UserInputError(f"calibration gave unusable latencies: TTFT {ttft}, TPOT {tpot}")
    derivation = {
        "rule": "slo = factor x max over systems of the unloaded p50 (one agent at a time)",
        "factor": factor,
        "tpot_factor": tpot_factor,
        "unloaded_ttft_s_p50": ttft,
        "unloaded_tpot_s_p50": tpot,
        "per_system": per_system,
    }
    return SLO(ttft_s=factor * ttft, tpot_s=tpot_factor * tpot), derivation
