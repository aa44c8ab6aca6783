"""Profile our runtime's engines on this machine: the simulator's hardware file for it.

A real `LocalCluster` (`oracle`: NICs unlimited, so only the engines' own work is timed)
runs small calibration workloads, none of them the benchmark's:

- prefill service time: K agents submit together, so the prefill engine serves them one
  after another and their first tokens come one service time apart (the slope of the
  sorted first-token times); fresh prompts of 1,024, 2,048 and 4,096 tokens, then the same
  prompts again, now hits of all but the last block. A non-negative least-squares fit gives
  time = overhead + context x `prefill_context_token_s` + new x `prefill_new_token_s`
  + pairs x `prefill_attention_pair_s`, pairs = new x context + new (new + 1) / 2 the
  query-key pairs of causal attention (`sim.cost.attention_pairs`): without that term a
  cached turn (4,032 context, 64 new) was predicted 2.7x slower than measured, because the
  fresh prompts' quadratic attention was charged to every context token;
- decode step time: K agents with prompts of P tokens decode G tokens together (each of the
  two decode engines holds K/2); TPOT at (K, P) = (2, 1024), (16, 1024), (16, 4096) fits
  step = overhead + batch x `decode_seq_s` + Σ context x `decode_context_token_s`;
- turn gap: the time from a turn's last token to the agent's next turn starting;
- the decode engines' CPU for moving KV: their process CPU seconds (reported with their
  stats) beyond their idle rate over each prefill run above (1-token turns: every prompt's
  KV goes into a decode engine's cache, fresh prompts persist their whole blocks, hits only
  the last), fitted non-negatively as tokens into decode KV x `de_kv_cpu_s_per_byte` +
  tokens persisted x `de_persist_cpu_s_per_byte` (per byte: x the model's KV bytes/token).

A throw-away round first (the engines' first requests pay one-off costs), and every point
is the median of `REPEATS` runs, each with its own prompts.

Everything else in the file is the cluster's configuration (NIC rates, buffers, KV room) and
the cores its engines share (`host_cores`: the simulator's `sim.cpu`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from dualpath.core.config import ClusterConfig
from dualpath.sim.cost import attention_pairs
from dualpath.workload.metrics import TurnRecord
from dualpath.workload.trajectory import Trajectory, Turn
from dualpath.workload.workload import offline_workload

logger = logging.getLogger(__name__)

K_PREFILL = 12
FRESH_PROMPTS = (1024, 2048, 4096)  # fresh, then again as hits of all but the last block
DECODE_POINTS = ((2, 2048), (16, 2048), (16, 6144))
DECODE_GEN = 33
REPEATS = 3  # each point is the median of this many runs (the machine is shared)
IDLE_S = 3.0  # the decode engines' idle CPU rate is measured over this long
STATS_WAIT_S = 5.0  # a reading waits (at most) for every engine's next report (every 0.5 s)
# The engines' storage reader pools (`engine/prefill.py`, `engine/decode.py`:
# ThreadPoolExecutor(max_workers=2)): concurrent reads per engine.
READER_THREADS = 2


def host_cores(config: ClusterConfig) -> float:
    """The engines' share of this machine in engines' worth of cores: the cores this process
    may run on over each engine's torch threads (an engine computes on `threads` cores)."""
    return len(os.sched_getaffinity(0)) / max(1, config.threads)


def _agents(prompts: list[int], gen: int, tag: str, turns: int = 1) -> list[Trajectory]:
    return [Trajectory(f"{tag}{i}", tuple(Turn(p if t == 0 else 16, gen if t == 0 else 1)
                                          for t in range(turns)))
            for i, p in enumerate(prompts)]


def _slope(values: list[float]) -> float:
    """Least-squares slope of sorted values against their rank."""
    ys = sorted(values)
    n = len(ys)
    mx = (n - 1) / 2
    my = sum(ys) / n
    sxx = sum((i - mx) ** 2 for i in range(n))
    return sum((i - mx) * (y - my) for i, y in enumerate(ys)) / sxx


def _fit(rows: list[tuple[float, ...]], ys: list[float]) -> list[float]:
    """Non-negative least squares y = Σ c_j x_j: a fit with a negative coefficient drops
    that column (its coefficient is 0) and is redone over the rest."""
    import numpy as np

    a = np.array(rows, dtype=float)
    y = np.array(ys, dtype=float)
    active = list(range(a.shape[1]))
    coef = np.zeros(a.shape[1])
    while active:
        sol, *_ = np.linalg.lstsq(a[:, active], y, rcond=None)
        if (sol >= 0).all():
            coef[active] = sol
            break
        active.pop(int(np.argmin(sol)))
    return [float(c) for c in coef]


async def _measure(config: ClusterConfig) -> dict[str, Any]:
    from dualpath.bench.cluster_target import ClusterTarget
    from dualpath.bench.driver import run_workload_async
    from dualpath.runtime.cluster import LocalCluster
    from dualpath.workload.tokens import TokenSource

    cluster = LocalCluster(config)
    await cluster.start()
    try:
        tokens = TokenSource(cluster.model_config.vocab_size,
                             forbidden_ids=cluster.tokenizer.eos_token_ids, seed=1)
        target = ClusterTarget(cluster)

        async def run(trajs: list[Trajectory]) -> list[TurnRecord]:
            result = await run_workload_async(target, offline_workload(trajs), tokens=tokens,
                                              progress=False)
            await asyncio.sleep(1.0)  # the decode engines' writer threads persist the blocks
            return list(result.records)

        await run(_agents([512] * 4, 4, "throwaway-"))
        idle0 = await _de_cpu(cluster)
        await asyncio.sleep(IDLE_S)
        reading = await _de_cpu(cluster)  # each run's end is the next run's start
        idle_rate = max(0.0, (reading[0] - idle0[0]) / max(1e-9, reading[1] - idle0[1]))
        prefill: list[tuple[float, float, float]] = []  # (context, new, service seconds)
        # (prompt tokens into decode KV, tokens persisted, decode engines' CPU seconds)
        kv_cpu: list[tuple[float, float, float]] = []
        for p in FRESH_PROMPTS:
            fresh, hits, fresh_cpu, hit_cpu = [], [], [], []
            ctx = 0.0
            for rep in range(REPEATS):
                trajs = _agents([p] * K_PREFILL, 1, f"fresh{p}r{rep}-")
                before = reading
                fresh.append(_slope([r.first_token_s for r in await run(trajs)]))
                mid = await _de_cpu(cluster)
                again = await run(trajs)  # the same prompts: now stored
                after = reading = await _de_cpu(cluster)
                hits.append(_slope([r.first_token_s for r in again]))
                ctx = statistics.mean(r.cached_tokens for r in again)
                fresh_cpu.append(_busy(before, mid, idle_rate))
                hit_cpu.append(_busy(mid, after, idle_rate))
            prefill.append((0.0, float(p), statistics.median(fresh)))
            prefill.append((ctx, p - ctx, statistics.median(hits)))
            # 1-token turns: every prompt token's KV goes into a decode engine's cache; a
            # fresh prompt's whole blocks are persisted, a hit persists only its last one.
            blocks = p // config.block_size * config.block_size
            kv_cpu.append((float(K_PREFILL * p), float(K_PREFILL * blocks),
                           statistics.median(fresh_cpu)))
            kv_cpu.append((float(K_PREFILL * p), float(K_PREFILL * (blocks - ctx)),
                           statistics.median(hit_cpu)))
        decode: list[tuple[float, float, float]] = []  # (per-DE batch, mean context, TPOT)
        for k, p in DECODE_POINTS:
            tpots = []
            for rep in range(REPEATS):
                recs = await run(_agents([p] * k, DECODE_GEN, f"dec{k}x{p}r{rep}-"))
                tpots.append(statistics.median((r.end_s - r.first_token_s) / (r.generated_tokens - 1)
                                               for r in recs))
            decode.append((k / 2, p + DECODE_GEN / 2, statistics.median(tpots)))
        recs = await run(_agents([512] * 4, 4, "gap-", turns=2))
        by_agent: dict[int, dict[int, TurnRecord]] = {}
        for r in recs:
            by_agent.setdefault(r.agent_id, {})[r.turn_index] = r
        gap = statistics.mean(t[1].start_s - t[0].end_s for t in by_agent.values())
    finally:
        await cluster.shutdown()
    return {"prefill_samples": prefill, "decode_samples": decode, "turn_gap_s": gap,
            "kv_cpu_samples": kv_cpu, "de_idle_cpu_rate": idle_rate}


async def _de_cpu(cluster: Any) -> tuple[float, float]:
    """(CPU seconds, engine clock seconds) summed over the decode engines, from reports that
    all came after this call began (an engine reports every 0.5 s)."""
    decode = [e.engine_id for e in cluster.books.ledger.engines.values() if e.role == "decode"]
    asked = {e: cluster.counters().get(e, {}).get("process.clock_s", 0.0) for e in decode}
    for _ in range(int(STATS_WAIT_S / 0.1)):
        await asyncio.sleep(0.1)
        now = cluster.counters()
        if all(now.get(e, {}).get("process.clock_s", 0.0) > asked[e] for e in decode):
            return (sum(now[e]["process.cpu_s"] for e in decode),
                    sum(now[e]["process.clock_s"] for e in decode))
    raise RuntimeError(f"decode engines {decode} sent no stats in {STATS_WAIT_S} s")


def _busy(before: tuple[float, float], after: tuple[float, float], idle_rate: float) -> float:
    """CPU seconds the decode engines spent beyond idling between two `_de_cpu` readings."""
    return max(0.0, (after[0] - before[0]) - idle_rate * (after[1] - before[1]))


def profile_hardware(base: ClusterConfig, kv_bytes_per_token: int) -> dict[str, Any]:
    """Measure the engines of a cluster shaped like `base` and return the hardware file's
    JSON object (every field with a `_field` note saying where it comes from)."""
    with tempfile.TemporaryDirectory(prefix="dualpath-profile-") as tmp:
        cfg = replace(base, system="oracle", store_path=str(Path(tmp) / "store"))
        print("profiling the engines (oracle cluster, calibration workloads)", file=sys.stderr)
        m = asyncio.run(_measure(cfg))
    pre = _fit([(1.0, c, n, attention_pairs(c, n)) for c, n, _ in m["prefill_samples"]],
               [t for *_, t in m["prefill_samples"]])
    dec = _fit([(1.0, b, b * c) for b, c, _ in m["decode_samples"]], [t for *_, t in m["decode_samples"]])
    kv = _fit([(into, persisted) for into, persisted, _ in m["kv_cpu_samples"]],
              [cpu for *_, cpu in m["kv_cpu_samples"]])
    snic = base.snic_bytes_s or 1e12
    cnic = base.cnic_bytes_s or 1e12
    return {
        "name": "local-runtime",
        "_source": "our runtime (`dualpath.runtime.LocalCluster`, engine processes on this machine's CPU) "
                   "as the storage-bound benchmark configures it; engine speeds measured by "
                   "`dualpath.bench.runtime_profile` (calibration workloads, not the benchmark)",
        "gpus_per_node": base.engines_per_node,
        "_gpus_per_node": "ClusterConfig.engines_per_node (an engine stands for one GPU)",
        "snic_bytes_s": snic, "_snic_bytes_s": "ClusterConfig.snic_bytes_s (emulated, shaped exactly)",
        "cnic_bytes_s": cnic, "_cnic_bytes_s": "ClusterConfig.cnic_bytes_s",
        "nic_efficiency": 1.0,
        "_nic_efficiency": "software shaping at the configured rate (`dualpath bench transfer`: shaped-rate accuracy 0.98)",
        "pcie_bytes_s": 1e12, "_pcie_bytes_s": "no PCIe: host-to-engine copies pass only the emulated CNIC",
        "storage_aggregate_bytes_s": 1e12,
        "_storage_aggregate_bytes_s": "local file store; the per-node SNIC is the only storage limit",
        "dram_buffer_bytes": float(max(base.pe_buffer_bytes, base.de_buffer_bytes) * base.engines_per_node),
        "_dram_buffer_bytes": "ClusterConfig.pe_buffer_bytes / de_buffer_bytes x engines per node",
        "hbm_bytes": 64e9, "hbm_reserve_fraction": 0.0,
        "_hbm_bytes": "engines keep KV in host memory; decode KV room is set from decode_kv_bytes",
        "cnic_hi_weight": base.cnic_high_weight, "_cnic_hi_weight": "ClusterConfig.cnic_high_weight",
        "prefill_batch_overhead_s": pre[0], "prefill_context_token_s": pre[1],
        "prefill_new_token_s": max(pre[2], 1e-9), "prefill_attention_pair_s": pre[3],
        "_prefill_new_token_s": f"fit of prefill service times {m['prefill_samples']} (context, new, s)",
        "decode_step_overhead_s": dec[0], "decode_seq_s": dec[1], "decode_context_token_s": dec[2],
        "_decode_seq_s": f"fit of TPOT {m['decode_samples']} (per-engine batch, mean context, s)",
        "de_kv_cpu_s_per_byte": kv[0] / kv_bytes_per_token,
        "de_persist_cpu_s_per_byte": kv[1] / kv_bytes_per_token,
        "_de_kv_cpu_s_per_byte": "fit of the decode engines' CPU seconds beyond idle "
                                 f"(idle {m['de_idle_cpu_rate']:.3f} cores) over 1-token turns "
                                 f"{m['kv_cpu_samples']} (prompt tokens into decode KV, tokens "
                                 "persisted, s): receiving KV into the paged cache, and "
                                 "persisting whole blocks",
        "turn_gap_s": max(0.0, m["turn_gap_s"]),
        "_turn_gap_s": "mean time from a turn's last token to the agent's next turn (client + front-end)",
        "host_cores": host_cores(base),
        "_host_cores": "cores the engines share (os.sched_getaffinity of this process) over "
                       "ClusterConfig.threads torch threads per engine; the profile's points "
                       "keep at most two engines computing at once",
        # Not hardware fields: the simulator configuration this cluster implies (SimConfig).
        "_cluster": {
            "block_tokens": base.block_size,
            "de_kv_capacity_tokens": base.decode_kv_bytes // (base.block_size * kv_bytes_per_token)
            * base.block_size,
            "read_slots_per_node": READER_THREADS * base.engines_per_node,
            "notes": "ClusterConfig.block_size; decode_kv_bytes in whole blocks; 2 storage reader "
                     "threads per engine (engine/prefill.py, engine/decode.py)",
        },
    }
