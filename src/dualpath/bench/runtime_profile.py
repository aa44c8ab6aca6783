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
- the decode engines' CPU: their process CPU seconds (reported with their stats) beyond
  their idle rate over every run, fitted non-negatively in one go as prompt tokens into
  decode KV x `de_kv_cpu_s_per_byte` + tokens persisted x `de_persist_cpu_s_per_byte` (per
  byte: x the model's KV bytes/token) + steps x `decode_step_overhead_s` + Σ batch x
  `decode_seq_s` + Σ context x `decode_context_token_s`, the steps, batch sizes and
  contexts counted by the engines themselves. The prefill runs above are 1-token turns
  (every prompt's KV goes into a decode engine's cache, fresh prompts persist their whole
  blocks, hits only the last); the decode runs store K agents' P-token prompts, then let
  the same prompts (now hits, so the prefills are quick) decode G tokens, each decode
  engine holding K/2: (K, P, G) = (2, 2048, 65), (16, 2048, 129), (16, 6144, 129),
  (8, 4096, 129). A decode step's time is its CPU: an engine computes on one core. (The
  fit used to take TPOT at batch K/2, but the prefill engine hands fresh prompts over one
  by one, slower than the decode finished them: every step had batch 1, and the context
  cost came out 8x too cheap);
- the front end's CPU (this process: the scheduler and the benchmark client, which handle
  every streamed token) beyond its idle rate over the same runs, fitted as turns x
  `frontend_cpu_s_per_turn` + tokens x `frontend_cpu_s_per_token`;
- turn gap: the time from a turn's last token to the agent's next turn starting.

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
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from dualpath.core.config import ClusterConfig
from dualpath.sim.cost import attention_pairs
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
        idle0 = await _reading(cluster)
        await asyncio.sleep(IDLE_S)
        reading = await _reading(cluster)  # each run's end is the next run's start
        idle_rate = max(0.0, (reading.cpu_s - idle0.cpu_s) / max(1e-9, reading.clock_s - idle0.clock_s))
        fe_idle_rate = max(0.0, (reading.fe_cpu_s - idle0.fe_cpu_s)
                           / max(1e-9, reading.fe_clock_s - idle0.fe_clock_s))
        pe_idle_rate = max(0.0, (reading.pe_cpu_s - idle0.pe_cpu_s)
                           / max(1e-9, reading.pe_clock_s - idle0.pe_clock_s))
        block = config.block_size
        # One row per run: the decode engines' work and their CPU beyond idle (`_cpu_row`).
        cpu_rows: list[tuple[float, ...]] = []
        # One row per run: (turns, tokens streamed, the front end's CPU beyond idle).
        fe_rows: list[tuple[float, float, float]] = []
        # One row per run: ((context, new) of each turn's prefill, bytes the prefill engine
        # read, bytes it sent, its CPU beyond idle); and the decode engines' (read, sent).
        pe_rows: list[tuple[list[tuple[float, float]], float, float, float]] = []
        de_io: list[tuple[float, float]] = []

        async def measured(trajs: list[Trajectory], pe_row: bool = False) -> list[TurnRecord]:
            nonlocal reading
            before = reading
            recs = await run(trajs)
            reading = await _reading(cluster)
            cpu_rows.append(_cpu_row(recs, before, reading, idle_rate, block))
            de_io.append((reading.de_read_bytes - before.de_read_bytes,
                          reading.de_sent_bytes - before.de_sent_bytes))
            if pe_row:
                pe_rows.append(([(float(r.cached_tokens), float(r.prompt_tokens - r.cached_tokens))
                                 for r in recs],
                                reading.pe_read_bytes - before.pe_read_bytes,
                                reading.pe_sent_bytes - before.pe_sent_bytes,
                                max(0.0, reading.pe_cpu_s - before.pe_cpu_s
                                    - pe_idle_rate * (reading.pe_clock_s - before.pe_clock_s))))
            fe_rows.append((float(len(recs)), float(sum(r.generated_tokens for r in recs)),
                            max(0.0, reading.fe_cpu_s - before.fe_cpu_s
                                - fe_idle_rate * (reading.fe_clock_s - before.fe_clock_s))))
            return recs

        prefill: list[tuple[float, float, float]] = []  # (context, new, service seconds)
        for p in FRESH_PROMPTS:
            fresh, hits = [], []
            ctx = 0.0
            for rep in range(REPEATS):
                trajs = _agents([p] * K_PREFILL, 1, f"fresh{p}r{rep}-")
                # The prefill engine's CPU is read over these runs only: the forwards' shapes
                # are the prefill fit's own (the decode runs' 6,144-token prompts are not).
                fresh.append(_slope([r.first_token_s for r in await measured(trajs, True)]))
                again = await measured(trajs, True)  # the same prompts: now stored
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
                await measured(_agents([p] * k, 1, f"dec{k}x{p}r{rep}-"))
                recs = await measured(_agents([p] * k, gen, f"dec{k}x{p}r{rep}-"))
                tpots.append(statistics.median((r.end_s - r.first_token_s) / (r.generated_tokens - 1)
                                               for r in recs))
                row = cpu_rows[-1]
                batches.append(row[3] / max(1.0, row[2]))
            tpot.append((float(k), float(p), statistics.median(batches), statistics.median(tpots)))
        recs = await run(_agents([512] * 4, 4, "gap-", turns=2))
        by_agent: dict[int, dict[int, TurnRecord]] = {}
        for r in recs:
            by_agent.setdefault(r.agent_id, {})[r.turn_index] = r
        gap = statistics.mean(t[1].start_s - t[0].end_s for t in by_agent.values())
    finally:
        await cluster.shutdown()
    return {"prefill_samples": prefill, "decode_tpot": tpot, "turn_gap_s": gap,
            "cpu_rows": cpu_rows, "fe_rows": fe_rows, "pe_rows": pe_rows, "de_io": de_io,
            "de_idle_cpu_rate": idle_rate, "fe_idle_cpu_rate": fe_idle_rate,
            "pe_idle_cpu_rate": pe_idle_rate}


@dataclass(frozen=True)
class _Reading:
    """The decode engines' counters summed, and this process's CPU, at one moment."""

    cpu_s: float  # the decode engines' process CPU seconds
    clock_s: float  # their clocks (summed: the idle rate is per engine-second)
    steps: float
    batch_sum: float
    ctx_sum: float
    fe_cpu_s: float  # this process: the scheduler and the client (the front end)
    fe_clock_s: float
    pe_cpu_s: float  # the prefill engines' process CPU seconds, clocks, and KV moved
    pe_clock_s: float
    pe_read_bytes: float  # read from the store (PE read path)
    pe_sent_bytes: float  # KV sent over the CNIC to the decode engines
    de_read_bytes: float  # the decode engines' store reads (DE read path) ...
    de_sent_bytes: float  # ... and the KV they send to the prefill engines


async def _reading(cluster: Any) -> _Reading:
    """The decode engines' counters from reports that all came after this call began (an
    engine reports every 0.5 s), and the front end's CPU when they had all come."""
    engines = list(cluster.books.ledger.engines.values())
    decode = [e.engine_id for e in engines if e.role == "decode"]
    prefill = [e.engine_id for e in engines if e.role == "prefill"]
    asked = {e: cluster.counters().get(e, {}).get("process.clock_s", 0.0) for e in decode + prefill}
    for _ in range(int(STATS_WAIT_S / 0.1)):
        await asyncio.sleep(0.1)
        now = cluster.counters()
        if all(now.get(e, {}).get("process.clock_s", 0.0) > asked[e] for e in asked):
            def total(key: str, ids: list[int] = decode, now: dict[int, Any] = now) -> float:
                return sum(now[e].get(key, 0.0) for e in ids)

            return _Reading(total("process.cpu_s"), total("process.clock_s"),
                            total("decode.steps"), total("decode.batch_sum"),
                            total("decode.ctx_sum"), time.process_time(), time.monotonic(),
                            total("process.cpu_s", prefill), total("process.clock_s", prefill),
                            total("bytes_read_pe_path", prefill), total("cnic.tx.kv.bytes", prefill),
                            total("bytes_read_de_path"), total("cnic.tx.kv.bytes"))
    raise RuntimeError(f"engines {sorted(asked)} sent no stats in {STATS_WAIT_S} s")


def _cpu_row(recs: list[TurnRecord], before: _Reading, after: _Reading, idle_rate: float,
             block: int) -> tuple[float, ...]:
    """(prompt tokens into decode KV, tokens persisted, decode steps, Σ batch, Σ context,
    the decode engines' CPU seconds beyond idling) over one run. Persisted: each turn's new
    whole blocks of the KV it computed (`sim.state.computed_kv_tokens`), as the simulator
    charges them."""
    into = float(sum(r.prompt_tokens for r in recs))
    persisted = float(sum(max(0, computed_kv_tokens(r.prompt_tokens, r.generated_tokens) // block
                              - r.cached_tokens // block) * block for r in recs))
    busy = max(0.0, (after.cpu_s - before.cpu_s) - idle_rate * (after.clock_s - before.clock_s))
    return (into, persisted, after.steps - before.steps, after.batch_sum - before.batch_sum,
            after.ctx_sum - before.ctx_sum, busy)


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


def _fit_error(rows: list[tuple[float, ...]], coef: tuple[float, ...]) -> list[float]:
    """Each row's relative error of the fit (rows end with the measured value)."""
    return [sum(c * x for c, x in zip(coef, r[:-1], strict=True)) / r[-1] - 1 if r[-1] > 0
            else 0.0 for r in rows]


def _rounded(values: Any) -> Any:
    if isinstance(values, (list, tuple)):
        return [_rounded(v) for v in values]
    return float(f"{values:.3g}") if isinstance(values, float) else values


def profile_hardware(base: ClusterConfig, kv_bytes_per_token: int) -> dict[str, Any]:
    """Measure the engines of a cluster shaped like `base` and return the hardware file's
    JSON object (every field with a `_field` note saying where it comes from)."""
    with tempfile.TemporaryDirectory(prefix="dualpath-profile-") as tmp:
        cfg = replace(base, system="oracle", store_path=str(Path(tmp) / "store"))
        print("profiling the engines (oracle cluster, calibration workloads)", file=sys.stderr)
        m = asyncio.run(_measure(cfg))
    pre = _fit([(1.0, c, n, attention_pairs(c, n)) for c, n, _ in m["prefill_samples"]],
               [t for *_, t in m["prefill_samples"]])
    # The prefill engine's CPU beyond its forwards' compute (the fit above): reading KV from
    # the store and sending KV over the CNIC, on its reader and sender threads.
    def compute_s(c: float, n: float) -> float:
        return pre[0] + c * pre[1] + n * pre[2] + attention_pairs(c, n) * pre[3]

    io_rows = [(read, sent, busy - sum(compute_s(c, n) for c, n in turns))
               for turns, read, sent, busy in m["pe_rows"]]
    read_cpu, send_cpu = _fit([r[:2] for r in io_rows], [r[2] for r in io_rows])
    # One fit of the decode engines' CPU: moving KV and stepping (see the module docstring),
    # their own store reads and sends (DE read path) at the prefill engine's rates.
    de_rows = [(*r[:5], r[5] - read * read_cpu - sent * send_cpu)
               for r, (read, sent) in zip(m["cpu_rows"], m["de_io"], strict=True)]
    kv_into, kv_persist, dec_step, dec_seq, dec_ctx = _fit([r[:5] for r in de_rows],
                                                           [r[5] for r in de_rows])
    m["cpu_rows"] = de_rows
    fe_turn, fe_token = _fit([r[:2] for r in m["fe_rows"]], [r[2] for r in m["fe_rows"]])
    cpu_err = _fit_error(m["cpu_rows"], (kv_into, kv_persist, dec_step, dec_seq, dec_ctx))
    fe_err = _fit_error(m["fe_rows"], (fe_turn, fe_token))
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
        "decode_step_overhead_s": dec_step, "decode_seq_s": dec_seq, "decode_context_token_s": dec_ctx,
        "_decode_seq_s": "the decode engines' CPU per step, fitted jointly with de_kv_cpu_s_per_byte "
                         "(see there); measured TPOT at (agents, prompt, mean batch, TPOT s) "
                         f"{_rounded(m['decode_tpot'])}",
        "de_kv_cpu_s_per_byte": kv_into / kv_bytes_per_token,
        "de_persist_cpu_s_per_byte": kv_persist / kv_bytes_per_token,
        "_de_kv_cpu_s_per_byte": "one non-negative fit of the decode engines' process CPU seconds "
                                 f"beyond idle (idle {m['de_idle_cpu_rate']:.3f} cores) over "
                                 f"{len(m['cpu_rows'])} runs = prompt tokens into decode KV x "
                                 "de_kv_cpu (x KV bytes/token) + tokens persisted x de_persist_cpu "
                                 "+ steps x decode_step_overhead_s + Σ batch x decode_seq_s + "
                                 "Σ context x decode_context_token_s (steps, batches and contexts "
                                 "from the engines' counters); runs' relative errors "
                                 f"{_rounded(cpu_err)}",
        "engine_read_cpu_s_per_byte": read_cpu, "engine_send_cpu_s_per_byte": send_cpu,
        "_engine_read_cpu_s_per_byte": "fit of the prefill engine's process CPU seconds beyond idle "
                                       f"(idle {m['pe_idle_cpu_rate']:.3f} cores) and beyond its "
                                       "forwards' compute (the prefill fit) over "
                                       f"{len(io_rows)} runs = bytes read from the store x read + "
                                       "bytes sent over the CNIC x send (its reader and sender "
                                       "threads; the decode engines' reads and sends, DE read "
                                       "path, are charged at the same rates: the same code); "
                                       "(read, sent, CPU s) "
                                       f"{_rounded([list(r) for r in io_rows])}",
        "frontend_cpu_s_per_token": fe_token, "frontend_cpu_s_per_turn": fe_turn,
        "_frontend_cpu_s_per_token": "fit of this process's CPU seconds (the scheduler and the "
                                     "benchmark client) beyond idle (idle "
                                     f"{m['fe_idle_cpu_rate']:.3f} cores) over the same runs = "
                                     "turns x per_turn + tokens streamed x per_token; runs' "
                                     f"relative errors {_rounded(fe_err)}",
        "turn_gap_s": max(0.0, m["turn_gap_s"]),
        "_turn_gap_s": "mean time from a turn's last token to the agent's next turn (client + front-end)",
        "host_cores": host_cores(base),
        "_host_cores": "cores the engines share (os.sched_getaffinity of this process) over "
                       "ClusterConfig.threads torch threads per engine; the profile's points "
                       "keep at most two engines computing at once",
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
