"""Profile our runtime's engines on this machine: the simulator's hardware file for it.

A real `LocalCluster` (`oracle`: NICs unlimited, so only the engines' own work is timed;
prefix hits read on the prefill side, so which side reads does not move with the timing)
runs small calibration workloads, none of them the benchmark's:

- prefill runs: K agents with fresh prompts of 1,024, 2,048 and 4,096 tokens and 1-token
  answers, then the same prompts again, now hits of all but the last block;
- decode runs: K agents' P-token prompts are stored first (1-token turns), then the same
  prompts (now hits, so the prefills are quick next to the answers and the decode batches
  fill up) decode G tokens, each decode engine holding K/2: (K, P, G) = (2, 2048, 65),
  (16, 2048, 129), (16, 6144, 129), (8, 4096, 129).

Over every run the engines count their own work and the CPU it took (`process.cpu_s`, and
per thread: the prefill engine's forwards, the decode engines' steps with their batch sizes
and contexts, the reader threads' reads), and this process (the scheduler and the benchmark
client: the front end) reads its own CPU. `runtime_fit.fit_cpu` turns them into the simulator's rates,
each fitted (non-negative least squares) where it was measured directly, idle rates taken
off: the prefill forward = overhead + context x `prefill_context_token_s` + new x
`prefill_new_token_s` + pairs x `prefill_attention_pair_s` (pairs = new x context + new (new
+ 1) / 2, the query-key pairs of causal attention, `sim.cost.attention_pairs`); a decode step
= overhead + batch x `decode_seq_s` + Σ context x `decode_context_token_s`; bytes read and
sent (`engine_read_cpu_s_per_byte`, `engine_send_cpu_s_per_byte`); a decode engine's KV
work (`de_kv_cpu_s_per_byte` into its paged cache, `de_persist_cpu_s_per_byte` persisted);
the front end per turn and per streamed token. The first-token service times and the TPOTs
are kept in the notes for comparison. (The decode fit used to take TPOT at batch K/2 with
fresh prompts, but the prefill engine handed those over one by one, slower than the decode
finished them: every step had batch 1, and the context cost came out 2-4x too cheap.)

A throw-away round first (the engines' first requests pay one-off costs); each shape runs
`REPEATS` times, each with its own prompts. The turn gap is the time from a turn's last
token to the agent's next turn starting.

Everything else in the file is the cluster's configuration (NIC rates, buffers, KV room, a
stored block's header) and the cores its engines share (`host_cores`: the simulator's
`sim.cpu`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from dualpath.bench.runtime_fit import _rounded, _slope, fit_cpu
from dualpath.core.config import ClusterConfig
from dualpath.sim.state import computed_kv_tokens
from dualpath.workload.metrics import TurnRecord
from dualpath.workload.trajectory import Trajectory, Turn
from dualpath.workload.workload import offline_workload

logger = logging.getLogger(__name__)

K_PREFILL = 12
FRESH_PROMPTS = (1024, 2048, 4096)  # fresh, then again as hits of all but the last block
# (agents, prompt tokens, answer tokens): each of the two decode engines holds half the
# agents; the batch sizes and contexts each step really had come from the engines' counters.
DECODE_POINTS = ((2, 2048, 65), (16, 2048, 129), (16, 6144, 129), (8, 4096, 129))
PROFILE_QUOTA_S = 30.0  # the prefill engine's compute quota while profiling (no chunking)
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
        idle0 = await _reading(cluster)
        await asyncio.sleep(IDLE_S)
        reading = await _reading(cluster)  # each run's end is the next run's start
        idle = {k: max(0.0, (reading.cpu[k] - idle0.cpu[k]) / max(1e-9, reading.clock[k] - idle0.clock[k]))
                for k in reading.cpu}  # each role's idle rate, cores per engine-second
        block = config.block_size
        runs: list[dict[str, Any]] = []  # one per measured run (`_run_row`)

        async def measured(trajs: list[Trajectory], kind: str) -> list[TurnRecord]:
            nonlocal reading
            before = reading
            recs = await run(trajs)
            reading = await _reading(cluster)
            runs.append(_run_row(kind, recs, before, reading, idle, block))
            return recs

        prefill: list[tuple[float, float, float]] = []  # (context, new, service seconds)
        for p in FRESH_PROMPTS:
            fresh, hits = [], []
            ctx = 0.0
            for rep in range(REPEATS):
                trajs = _agents([p] * K_PREFILL, 1, f"fresh{p}r{rep}-")
                fresh.append(_slope([r.first_token_s for r in await measured(trajs, "prefill")]))
                again = await measured(trajs, "prefill")  # the same prompts: now stored
                hits.append(_slope([r.first_token_s for r in again]))
                ctx = statistics.mean(r.cached_tokens for r in again)
            prefill.append((0.0, float(p), statistics.median(fresh)))
            prefill.append((ctx, p - ctx, statistics.median(hits)))
        # Decode: the prompts are stored first (1-token turns), so the decode run's prefills
        # are hits, quick next to the answers: the decode batches really fill up.
        tpot: list[tuple[float, float, float, float]] = []  # (agents, prompt, mean batch, TPOT)
        for k, p, gen in DECODE_POINTS:
            tpots, batches = [], []
            for rep in range(REPEATS):
                await measured(_agents([p] * k, 1, f"dec{k}x{p}r{rep}-"), "store")
                recs = await measured(_agents([p] * k, gen, f"dec{k}x{p}r{rep}-"), "decode")
                tpots.append(statistics.median((r.end_s - r.first_token_s) / (r.generated_tokens - 1)
                                               for r in recs))
                batches.append(runs[-1]["de_batch"] / max(1.0, runs[-1]["de_steps"]))
            tpot.append((float(k), float(p), statistics.median(batches), statistics.median(tpots)))
        recs = await run(_agents([512] * 4, 4, "gap-", turns=2))
        by_agent: dict[int, dict[int, TurnRecord]] = {}
        for r in recs:
            by_agent.setdefault(r.agent_id, {})[r.turn_index] = r
        gap = statistics.mean(t[1].start_s - t[0].end_s for t in by_agent.values())
    finally:
        await cluster.shutdown()
    return {"prefill_samples": prefill, "decode_tpot": tpot, "turn_gap_s": gap, "runs": runs,
            "idle_rates": idle}


# The counters `_reading` sums per role ("pe": prefill engines, "de": decode engines).
_COUNTERS = {
    "steps": "decode.steps", "batch": "decode.batch_sum", "ctx": "decode.ctx_sum",
    "decode_cpu": "decode.cpu_s", "forwards": "prefill.forwards", "forward_cpu": "prefill.cpu_s",
    "read_cpu": "read.cpu_s", "sent": "cnic.tx.kv.bytes",
}


@dataclass(frozen=True)
class _Reading:
    """Each role's counters summed at one moment: "pe" and "de" the engines, "fe" this
    process (the scheduler and the benchmark client: the front end)."""

    cpu: dict[str, float]  # process CPU seconds
    clock: dict[str, float]  # clocks, summed over a role's engines (idle is per engine-second)
    counters: dict[str, dict[str, float]]  # role -> `_COUNTERS` key -> value; "read" bytes


async def _reading(cluster: Any) -> _Reading:
    """Every engine's counters from reports that all came after this call began (an engine
    reports every 0.5 s), and the front end's CPU when they had all come."""
    roles = {e.engine_id: ("pe" if e.role == "prefill" else "de")
             for e in cluster.books.ledger.engines.values()}
    asked = {e: cluster.counters().get(e, {}).get("process.clock_s", 0.0) for e in roles}
    for _ in range(int(STATS_WAIT_S / 0.1)):
        await asyncio.sleep(0.1)
        now = cluster.counters()
        if all(now.get(e, {}).get("process.clock_s", 0.0) > asked[e] for e in asked):
            cpu = {"pe": 0.0, "de": 0.0, "fe": time.process_time()}
            clock = {"pe": 0.0, "de": 0.0, "fe": time.monotonic()}
            counters: dict[str, dict[str, float]] = {
                r: dict.fromkeys([*_COUNTERS, "read"], 0.0) for r in ("pe", "de")}
            for e, role in roles.items():
                c = now[e]
                cpu[role] += c.get("process.cpu_s", 0.0)
                clock[role] += c.get("process.clock_s", 0.0)
                for key, name in _COUNTERS.items():
                    counters[role][key] += c.get(name, 0.0)
                counters[role]["read"] += c.get("bytes_read_pe_path", 0.0) + c.get(
                    "bytes_read_de_path", 0.0)
            return _Reading(cpu, clock, counters)
    raise RuntimeError(f"engines {sorted(asked)} sent no stats in {STATS_WAIT_S} s")


def _run_row(kind: str, recs: list[TurnRecord], before: _Reading, after: _Reading,
             idle: dict[str, float], block: int) -> dict[str, Any]:
    """One run's work and CPU: each role's process CPU beyond idling (`pe_busy`, `de_busy`,
    `fe_busy`), the engines' counters' deltas (`pe_forwards`, `de_steps`, ...), the turns'
    prefill shapes (context, new), prompt tokens into decode KV and tokens persisted (each
    turn's new whole blocks of the KV it computed, `sim.state.computed_kv_tokens`, as the
    simulator charges them), turns and tokens streamed."""
    row: dict[str, Any] = {"kind": kind}
    for role in ("pe", "de", "fe"):
        row[f"{role}_busy"] = max(0.0, after.cpu[role] - before.cpu[role]
                                  - idle[role] * (after.clock[role] - before.clock[role]))
    for role in ("pe", "de"):
        for key in (*_COUNTERS, "read"):
            row[f"{role}_{key}"] = after.counters[role][key] - before.counters[role][key]
    row["turns"] = [(float(r.cached_tokens), float(r.prompt_tokens - r.cached_tokens)) for r in recs]
    row["into"] = float(sum(r.prompt_tokens for r in recs))
    row["persisted"] = float(sum(
        max(0, computed_kv_tokens(r.prompt_tokens, r.generated_tokens) // block
            - r.cached_tokens // block) * block for r in recs))
    row["fe_turns"] = float(len(recs))
    row["fe_tokens"] = float(sum(r.generated_tokens for r in recs))
    return row


def block_header_bytes(config: ClusterConfig) -> int:
    """Bytes a block of `config`'s store carries beyond its KV: what `ShapedStore` moves over
    the SNIC with every read and persist (header + Full Block, `kv.block_value.value_bytes`)."""
    from dualpath.kv.block_value import value_bytes
    from dualpath.kv.hashing import block_hashes
    from dualpath.kv.layout import BlockGeometry
    from dualpath.model.presets import preset_config

    model = preset_config(config.model, seed=config.model_seed)
    geometry = BlockGeometry.from_model_config(model, config.block_size)
    key = block_hashes([0] * config.block_size, config.block_size, model.identity)[0]
    return value_bytes(geometry, key) - geometry.full_block_bytes


def profile_hardware(base: ClusterConfig, kv_bytes_per_token: int) -> dict[str, Any]:
    """Measure the engines of a cluster shaped like `base` and return the hardware file's
    JSON object (every field with a `_field` note saying where it comes from)."""
    with tempfile.TemporaryDirectory(prefix="dualpath-profile-") as tmp:
        # Hits read on the prefill side only: which side reads would otherwise move with the
        # timing (the scheduler's choice), and with it the prefill service times and whose
        # CPU the reads cost. The decode engines' reads and sends are charged at the
        # prefill engine's measured rates (the same code: `EngineBase.read_hit_blocks`, the
        # engines' senders). A quota no calibration prompt reaches: one forward per turn, so
        # each forward's shape is its turn's.
        cfg = replace(base, system="oracle", read_path="pe", prefill_quota_s=PROFILE_QUOTA_S,
                      store_path=str(Path(tmp) / "store"))
        print("profiling the engines (oracle cluster, calibration workloads)", file=sys.stderr)
        m = asyncio.run(_measure(cfg))
    f = fit_cpu(m["runs"])
    pre = f["prefill"]
    dec_step, dec_seq, dec_ctx = f["decode"]
    fe_turn, fe_token = f["frontend"]
    idle = m["idle_rates"]
    err = {k: _rounded(v) for k, v in f["errors"].items()}
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
        "_prefill_new_token_s": "fit of the prefill engine's forward CPU (its loop thread, counted "
                                "by the engine) over its forwards (count, Σ context, Σ new, Σ "
                                f"pairs), relative errors {err['prefill']}; service times "
                                "(slope of first tokens) for comparison "
                                f"{_rounded([list(x) for x in m['prefill_samples']])} (context, new, s)",
        "decode_step_overhead_s": dec_step, "decode_seq_s": dec_seq, "decode_context_token_s": dec_ctx,
        "_decode_seq_s": "fit of the decode engines' step CPU (their loop thread, counted by the "
                         "engines with the steps, batch sizes and contexts) over (steps, Σ batch, "
                         f"Σ context), relative errors {err['decode']}; decode_seq_s adds "
                         f"{f['decode_other_per_token_s']:.3g} s per token of their other threads' "
                         "CPU (see de_kv_cpu); measured TPOT at (agents, prompt, mean batch, TPOT "
                         f"s) {_rounded([list(x) for x in m['decode_tpot']])}",
        "de_kv_cpu_s_per_byte": f["kv_into_s_per_token"] / kv_bytes_per_token,
        "de_persist_cpu_s_per_byte": f["kv_persist_s_per_token"] / kv_bytes_per_token,
        "_de_kv_cpu_s_per_byte": "fit of the decode engines' remaining process CPU (beyond idle, "
                                 f"{idle['de']:.3f} cores each, their steps, and their reads and "
                                 "sends at the engine rates) over (prompt tokens into decode KV, "
                                 "tokens persisted, Σ batch): taking KV into the paged cache, "
                                 "persisting whole blocks, streaming tokens; relative errors "
                                 f"{err['decode_rest']}",
        "engine_read_cpu_s_per_byte": f["read_cpu_s_per_byte"],
        "engine_send_cpu_s_per_byte": f["send_cpu_s_per_byte"],
        "_engine_read_cpu_s_per_byte": "the engines' reader threads' CPU seconds (counted by the "
                                       "engines) over the bytes they read, as stored; send: fit "
                                       "of the prefill engine's remaining process CPU (beyond "
                                       f"idle, {idle['pe']:.3f} cores, its forwards and reads) "
                                       "over the KV bytes it sent, relative errors "
                                       f"{err['send']}; a decode engine's reads and sends are "
                                       "charged at the same rates (the same code)",
        "frontend_cpu_s_per_token": fe_token, "frontend_cpu_s_per_turn": fe_turn,
        "_frontend_cpu_s_per_token": "fit of this process's CPU seconds (the scheduler and the "
                                     f"benchmark client) beyond idle ({idle['fe']:.3f} cores) "
                                     "over (turns, tokens streamed), relative errors "
                                     f"{err['frontend']}",
        "turn_gap_s": max(0.0, m["turn_gap_s"]),
        "_turn_gap_s": "mean time from a turn's last token to the agent's next turn (client + front-end)",
        "host_cores": host_cores(base),
        "_host_cores": "cores the engines share (os.sched_getaffinity of this process) over "
                       "ClusterConfig.threads torch threads per engine; the rates above are "
                       "fitted on CPU seconds, so the calibration runs' own contention does not "
                       "enter them",
        # The measured runs themselves (`_run_row`), so the fits can be redone from the file.
        "_profile_runs": m["runs"],
        # Not hardware fields: the simulator configuration this cluster implies (SimConfig).
        "_cluster": {
            "block_tokens": base.block_size,
            "block_header_bytes": block_header_bytes(base),
            "de_kv_capacity_tokens": base.decode_kv_bytes // (base.block_size * kv_bytes_per_token)
            * base.block_size,
            "read_slots_per_node": READER_THREADS * base.engines_per_node,
            "notes": "ClusterConfig.block_size; a stored block's header (kv.block_file, rounded "
                     "up to a page; it crosses the SNIC with the block); decode_kv_bytes in "
                     "whole blocks; 2 storage reader threads per engine (engine/prefill.py, "
                     "engine/decode.py)",
        },
    }
