"""The result of one simulation: TurnRecords and the JSON report.

The turn-level fields (JCT, throughput, TTFT/TTST/TPOT percentiles, SLO) come from the
shared `dualpath.workload.metrics.build_report`; this module adds what only a simulator knows:
bytes and utilization per NIC, the TTFT breakdown, the scheduler's decisions.
"""

from __future__ import annotations

from typing import Any

from dualpath.sim.simulator import Simulator
from dualpath.workload.metrics import TurnRecord, build_report


def turn_records(sim: Simulator, *, release: bool = False) -> list[TurnRecord]:
    """Every finished turn's TurnRecord, by (end time, agent, turn). release: hand over
    `sim.records` itself (emptied in the simulator) instead of a copy."""
    out = sim.records if release else list(sim.records)
    if release:
        sim.records = []
    out.sort(key=lambda t: (t.end_s, t.agent_id, t.turn_index))  # ends in order: linear
    return out


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def _max_over_avg(xs: list[float]) -> float:
    avg = _mean(xs)
    return max(xs) / avg if xs and avg > 0 else float("nan")


def _util_timeline(links: list[Any], bin_s: float, nbins: int) -> list[float]:
    if not links:
        return []
    out = [0.0] * nbins
    for link in links:
        cap = link.capacity_bytes_s * bin_s
        for i, b in enumerate(link.timeline[:nbins]):
            out[i] += b / cap
    return [round(x / len(links), 4) for x in out]


def ttft_breakdown(sim: Simulator) -> dict[str, float]:
    """Mean seconds of TTFT spent queueing (waiting for placement), reading (placement to
    prefix in a buffer, including waits for a read slot or buffer room) and in prefill
    (ready at the PE to first token, including the PE's own queue), over finished turns."""
    n = len(sim.records)
    q, rd, pf = (s / n if n else float("nan") for s in sim.ttft_sums)
    return {"ttft_queue_s_mean": q, "ttft_read_s_mean": rd, "ttft_prefill_s_mean": pf}


def sim_report(sim: Simulator, records: list[TurnRecord], *, mode: str, wall_s: float,
               num_agents: int, breakdown: dict[str, float] | None = None) -> dict[str, Any]:
    """breakdown: `ttft_breakdown(sim)`, computed before `turn_records(release=True)`."""
    cfg = sim.cfg
    total_turns = sum(len(t) for t in sim.turns)
    unfinished = total_turns - len(records)
    jct = max((r.end_s for r in records), default=0.0)
    nodes = sim.nodes
    read_bytes = [n.snic.bytes_total for n in nodes]
    pe_nodes = [n for n in nodes if n.role == "prefill"]
    de_nodes = [n for n in nodes if n.role == "decode"]
    snic_cap = nodes[0].snic.capacity_bytes_s
    cnic_cap = sim.engines[0].rx.capacity_bytes_s
    span = max(jct, 1e-9)
    cnic_util = [
        max(e.rx.bytes_total + e.acct_rx, e.tx.bytes_total + e.acct_tx) / (cnic_cap * span)
        for e in sim.engines
    ]
    extra: dict[str, Any] = {
        "system": cfg.system,
        "model": sim.model.name,
        "hardware": sim.hw.name,
        "pd": f"{cfg.pd[0]}P{cfg.pd[1]}D",
        "num_gpus": len(sim.engines),
        "kv_bytes_per_token": sim.kvb,
        "bytes_read_pe_path": sum(n.snic.bytes_total for n in pe_nodes),
        "bytes_read_de_path": sum(n.snic.bytes_total for n in de_nodes),
        "bytes_written_storage": sum(n.bytes_written for n in nodes),
        "snic_read_bytes": [round(b) for b in read_bytes],
        "snic_utilization": [round(b / (snic_cap * span), 4) for b in read_bytes],
        "snic_max_over_avg": _max_over_avg(read_bytes),
        "snic_utilization_pe_mean": _mean([n.snic.bytes_total / (snic_cap * span) for n in pe_nodes]),
        "snic_utilization_de_mean": _mean([n.snic.bytes_total / (snic_cap * span) for n in de_nodes]),
        "cnic_rx_bytes_total": sum(e.rx.bytes_total + e.acct_rx for e in sim.engines),
        "cnic_tx_bytes_total": sum(e.tx.bytes_total + e.acct_tx for e in sim.engines),
        "cnic_utilization": [round(u, 4) for u in cnic_util],
        "cnic_utilization_mean": _mean(cnic_util),
        "cnic_utilization_max": max(cnic_util) if cnic_util else float("nan"),
        **(breakdown if breakdown is not None else ttft_breakdown(sim)),
        "pd_room_waits": sim.transfer.room_waits,
        "dram_buffer_peak_bytes": [round(n.buf_total - n.buf_min_free) for n in nodes],
        "pe_busy_fraction_mean": _mean([e.busy_s / span for e in sim.engines if e.role == "prefill"]),
        "de_busy_fraction_mean": _mean([e.busy_s / span for e in sim.engines if e.role == "decode"]),
        "de_batch_size_mean": _mean([e.d_area / e.busy_s for e in sim.engines
                                     if e.role == "decode" and e.busy_s > 0]),
        "scheduler": {
            "placement": sim.sched_config.placement,
            "read_policy": sim.sched_config.read_policy,
            "alpha_tokens": sim.alpha,
            "beta_tokens": sim.beta,
            "calls": sim.sched_calls,
            "read_side_counts": dict(sim.side_counts),
            "decisions": [list(d) for d in sim.decisions] if cfg.log_decisions else None,
        },
        "sim_events": sim.loop.events_run,
        "sim_wall_s": wall_s,
        "sim_events_per_s": sim.loop.events_run / wall_s if wall_s > 0 else float("nan"),
    }
    if cfg.timeline_bin_s:
        bin_s = cfg.timeline_bin_s
        nbins = int(span / bin_s) + 1
        extra["timeline"] = {
            "bin_s": bin_s,
            "snic_pe_utilization": _util_timeline([n.snic for n in pe_nodes], bin_s, nbins),
            "snic_de_utilization": _util_timeline([n.snic for n in de_nodes], bin_s, nbins),
            "cnic_rx_utilization": _util_timeline([e.rx for e in sim.engines], bin_s, nbins),
        }
    return build_report(records, mode=mode, unfinished_turns=unfinished, num_agents=num_agents,
                        extra=extra)
