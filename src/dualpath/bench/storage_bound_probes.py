"""Live runs of the storage-bound scenario for the online capacity search: the warm store,
the unloaded calibration, and one online probe per (system, arrival rate).

Agent i always runs trajectory i of the scenario (`storage_bound.build_workload`: 64K-style,
scaled, resumed mid-trajectory) with its own token contents, whichever run it is part of, so
its context is in the warm store whatever the arrival rate. The warm store grows on demand:
a probe whose Poisson window holds more agents than have been warmed first runs the new ones'
first turns on an unlimited-NIC `dualpath` cluster (not timed), at least doubling the store so
the doubling capacity search rarely waits for it.

Every calibration and every probe starts a fresh cluster on its own copy of the warm store,
so each one begins idle and reads byte-identical KV whatever ran before it (a probe cut off
while overloaded leaves nothing behind). That costs one cluster start per probe.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import random
import shutil
import sys
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from dualpath.bench import storage_bound
from dualpath.bench.target import Target
from dualpath.core.errors import UserInputError
from dualpath.workload.metrics import SLO, TurnRecord, build_report
from dualpath.workload.tokens import TokenSource
from dualpath.workload.trajectory import Trajectory
from dualpath.workload.workload import AgentSpec, Workload, online_workload, poisson_arrivals

log = logging.getLogger(__name__)
T = TypeVar("T")


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

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "layout": "1P2D"}


def load_avg_1m() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


class WarmStore:
    """The agents' contexts so far, persisted once; every run copies it (see module doc)."""

    def __init__(self, scenario: Scenario, root: Path) -> None:
        self.scenario = scenario
        self.root = root
        self.warmed = 0
        self._warm: list[Trajectory] = []
        self._measured: list[Trajectory] = []

    def trajectories(self, n: int) -> list[Trajectory]:
        """The measured trajectories of agents 0..n-1 (the first is each one's resumed turn)."""
        self._build(n)
        return self._measured[:n]

    def _build(self, n: int) -> None:
        if n <= len(self._measured):
            return
        s = self.scenario
        ns = argparse.Namespace(agents=n, turns=s.turns, max_len=s.max_len, scale=s.scale,
                                seed=s.seed)
        warm, measured = storage_bound.build_workload(ns)
        self._warm = [a.trajectory for a in warm.agents]
        self._measured = [a.trajectory for a in measured.agents]

    def ensure(self, n: int) -> None:
        """Persist the contexts of agents up to n - 1 (at least doubling what is warm)."""
        if n <= self.warmed:
            return
        upto = max(n, 2 * self.warmed)
        self._build(upto)
        agents = tuple(AgentSpec(i, self._warm[i], 0.0) for i in range(self.warmed, upto))
        print(f"warm-up: contexts of agents {self.warmed}..{upto - 1} into {self.root}",
              file=sys.stderr)
        cfg = replace(storage_bound.cluster_config(self.scenario.model, self.root),
                      system="dualpath")

        async def body(target: Target, tokens: TokenSource) -> None:
            from dualpath.bench.driver import run_workload_async

            await run_workload_async(target, Workload(agents), tokens=tokens, progress=True,
                                     desc="warm-up")

        asyncio.run(_on_cluster(cfg, body))
        self.warmed = upto

    def copy(self, dst: Path) -> None:
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(self.root, dst)


class ProbeRunner:
    """Runs calibrations and probes on fresh clusters, each on its own copy of the store."""

    def __init__(self, scenario: Scenario, work_dir: Path) -> None:
        self.scenario = scenario
        self.work_dir = work_dir
        self.warm = WarmStore(scenario, work_dir / "warm")

    def _config(self, system: str, store: Path) -> Any:
        s = self.scenario
        return replace(storage_bound.cluster_config(s.model, store), system=system,
                       snic_bytes_s=s.snic_bytes_s, cnic_bytes_s=s.cnic_bytes_s)

    def _on_copy(self, system: str, tag: str,
                 body: Callable[[Target, TokenSource], Awaitable[T]]) -> tuple[T, dict[int, dict[str, float]]]:
        store = self.work_dir / f"{tag}-{system}"
        self.warm.copy(store)
        try:
            return asyncio.run(_on_cluster(self._config(system, store), body, counters=True))
        finally:
            shutil.rmtree(store, ignore_errors=True)

    def calibrate(self, system: str, num_agents: int) -> list[TurnRecord]:
        """Every turn of agents 0..num_agents-1, run one agent at a time (nothing else in the
        cluster): the unloaded TTFT and TPOT of this system."""
        if num_agents < 1:
            raise UserInputError(f"--calibration-agents must be >= 1, got {num_agents}")
        self.warm.ensure(num_agents)
        trajs = self.warm.trajectories(num_agents)

        async def body(target: Target, tokens: TokenSource) -> list[TurnRecord]:
            from dualpath.bench.driver import run_workload_async

            records: list[TurnRecord] = []
            for i, traj in enumerate(trajs):
                result = await run_workload_async(
                    target, Workload((AgentSpec(i, traj, 0.0),)), tokens=tokens,
                    progress=True, desc=f"{system} unloaded agent {i}")
                records.extend(result.records)
            return records

        records, _ = self._on_copy(system, "calibrate", body)
        return records

    def agents_at(self, aps: float) -> int:
        s = self.scenario
        return len(poisson_arrivals(aps, random.Random(s.arrival_seed),
                                    duration_s=s.probe_duration_s))

    def probe(self, system: str, aps: float, slo: SLO) -> dict[str, Any]:
        """One online run: Poisson arrivals at `aps` for the probe window, cut off a drain
        time later (a turn in flight longer than the TTFT objective then counts as a miss)."""
        s = self.scenario
        n = self.agents_at(aps)
        if n == 0:
            raise UserInputError(f"no agent arrives within --probe-duration at {aps:.4g} APS; "
                                 "raise --aps or --probe-duration")
        self.warm.ensure(n)
        workload = online_workload(self.warm.trajectories(n), aps=aps, seed=s.arrival_seed,
                                   duration_s=s.probe_duration_s)
        cutoff_s = s.probe_duration_s + s.probe_drain_s
        load_before = load_avg_1m()

        async def body(target: Target, tokens: TokenSource) -> Any:
            from dualpath.bench.driver import run_workload_async

            return await run_workload_async(target, workload, tokens=tokens, cutoff_s=cutoff_s,
                                            slo=slo, progress=True,
                                            desc=f"{system} {aps:.3g} APS")

        result, counters = self._on_copy(system, "probe", body)
        report = build_report(result.records, mode="online", slo=slo,
                              unfinished_turns=result.unfinished_turns, num_agents=n)
        report.update({
            "aps": aps,
            "bytes_read_pe_path": sum(c.get("bytes_read_pe_path", 0.0) for c in counters.values()),
            "bytes_read_de_path": sum(c.get("bytes_read_de_path", 0.0) for c in counters.values()),
            "length_mismatches": result.length_mismatches,
            "load_avg_1m": [load_before, load_avg_1m()],
        })
        att = report["slo_attainment"]
        print(f"{system} {aps:.4g} APS: {n} agents, {report['num_turns']} turns "
              f"(+{result.unfinished_turns} late), attainment {att:.3f}, TTFT p50/p99 "
              f"{report['ttft_s_p50']:.3g}/{report['ttft_s_p99']:.3g} s, TPOT p50 "
              f"{report['tpot_s_p50'] * 1e3:.3g} ms, load {load_before}", file=sys.stderr)
        return report


async def _on_cluster(config: Any, body: Callable[[Target, TokenSource], Awaitable[T]], *,
                      counters: bool = False) -> tuple[T, dict[int, dict[str, float]]]:
    """Start a cluster, run body(target, tokens), stop it; its engines' counters when asked."""
    from dualpath.bench.cluster_target import ClusterTarget
    from dualpath.runtime.cluster import LocalCluster

    cluster = LocalCluster(config)
    await cluster.start()
    try:
        tokens = TokenSource(cluster.model_config.vocab_size,
                             forbidden_ids=cluster.tokenizer.eos_token_ids, seed=0)
        out = await body(ClusterTarget(cluster), tokens)
        if not counters:
            return out, {}
        await asyncio.sleep(0.8)  # the engines' last counter reports
        return out, cluster.counters()
    finally:
        await cluster.shutdown()


def unloaded_slo(calibration: dict[str, list[TurnRecord]], factor: float) -> tuple[SLO, dict[str, Any]]:
    """SLO = factor x the unloaded median, the larger of the systems' medians for each of TTFT
    and TPOT (so every system meets it when alone); returns the SLO and how it was derived."""
    from dualpath.workload.metrics import percentile

    if not factor > 0:
        raise UserInputError(f"--slo-factor must be > 0, got {factor}")
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
        "unloaded_ttft_s_p50": ttft,
        "unloaded_tpot_s_p50": tpot,
        "per_system": per_system,
    }
    return SLO(ttft_s=factor * ttft, tpot_s=factor * tpot), derivation
