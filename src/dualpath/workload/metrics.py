"""Per-turn records and the report math shared by the benchmark driver and the simulator.

Whoever runs a workload (the HTTP driver, a fake target in tests, the discrete-event
simulator) produces one `TurnRecord` per finished turn, with times in seconds on one clock
whose zero is the start of the run. `build_report` turns a list of them into the result JSON
object (DESIGN.md section 6 field names). Definitions:

- TTFT = first_token_s - start_s; TTST (time to second token) = second_token_s - start_s;
  TPOT = (end_s - first_token_s) / (generated_tokens - 1), undefined for 1-token turns.
- JCT of the job = last end - first start (offline); per-agent JCT = an agent's last end -
  its first start.
- A turn meets the SLO when TTFT <= slo.ttft_s and (if defined) TPOT <= slo.tpot_s;
  `slo_attainment` is the fraction of turns that meet it (turns that never finished, passed
  as `unfinished_turns`, count as misses).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from dualpath.core.errors import UserInputError
from dualpath.core.frozen import reduce_frozen

PERCENTILES: tuple[int, ...] = (50, 90, 99)


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method), q in [0, 100]. NaN if empty."""
    if not values:
        return math.nan
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile q must be in [0, 100], got {q}")
    return _sorted_percentile(sorted(values), q)


def _sorted_percentile(ordered: Sequence[float], q: float) -> float:
    """`percentile` of values already in ascending order (q checked by the caller)."""
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = math.ceil(pos)
    if lo == hi:
        return float(ordered[lo])
    return float(ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo))


@dataclass(frozen=True)
class SLO:
    """Service-level objective of one turn (DESIGN.md section 4: TTFT <= 4 s, TPOT <= 50 ms)."""

    ttft_s: float = 4.0
    tpot_s: float = 0.05

    def __post_init__(self) -> None:
        if not (self.ttft_s > 0 and self.tpot_s > 0):
            raise UserInputError(
                f"SLO thresholds must be positive, got ttft_s={self.ttft_s}, tpot_s={self.tpot_s}"
            )

    def __reduce__(self) -> tuple[object, ...]:
        return reduce_frozen(self)  # pickle/copy, also when compiled


DEFAULT_SLO = SLO()


@dataclass(frozen=True, slots=True)
class TurnRecord:
    """Timing of one finished turn. Times are seconds since the start of the run."""

    agent_id: int
    turn_index: int
    start_s: float
    first_token_s: float
    second_token_s: float | None
    end_s: float
    prompt_tokens: int
    generated_tokens: int
    cached_tokens: int = 0

    @property
    def ttft_s(self) -> float:
        return self.first_token_s - self.start_s

    @property
    def ttst_s(self) -> float | None:
        return None if self.second_token_s is None else self.second_token_s - self.start_s

    @property
    def tpot_s(self) -> float | None:
        if self.generated_tokens < 2:
            return None
        return (self.end_s - self.first_token_s) / (self.generated_tokens - 1)

    def meets(self, slo: SLO) -> bool:
        tpot = self.tpot_s
        return self.ttft_s <= slo.ttft_s and (tpot is None or tpot <= slo.tpot_s)

    def __reduce__(self) -> tuple[object, ...]:
        return reduce_frozen(self)  # pickle/copy, also when compiled


def distribution(values: Sequence[float], prefix: str) -> dict[str, float]:
    """`{prefix}_mean`, `{prefix}_p50`, `_p90`, `_p99` of values (NaN when empty)."""
    out = {f"{prefix}_mean": (sum(values) / len(values)) if values else math.nan}
    ordered = sorted(values)  # once for every percentile (millions of turns at scale)
    for q in PERCENTILES:
        out[f"{prefix}_p{q}"] = _sorted_percentile(ordered, q) if ordered else math.nan
    return out


def agent_jcts_s(records: Iterable[TurnRecord]) -> dict[int, float]:
    """Per-agent job completion time: last turn end - first turn start."""
    first: dict[int, float] = {}
    last: dict[int, float] = {}
    for r in records:
        a = r.agent_id
        f = first.get(a)
        if f is None:
            first[a], last[a] = r.start_s, r.end_s
            continue
        if r.start_s < f:
            first[a] = r.start_s
        if r.end_s > last[a]:
            last[a] = r.end_s
    return {a: last[a] - first[a] for a in first}


def slo_attainment(records: Sequence[TurnRecord], slo: SLO, unfinished_turns: int = 0) -> float:
    """Fraction of turns that met the SLO; unfinished turns count as misses. NaN if none."""
    total = len(records) + unfinished_turns
    if total == 0:
        return math.nan
    return sum(1 for r in records if r.meets(slo)) / total


def throughput_timeline(
    records: Sequence[TurnRecord], bin_s: float | None = None
) -> tuple[list[float], list[float]]:
    """Generated tokens per second over time: (bin start times, tok/s per bin).

    A turn's tokens are spread uniformly over [first_token_s, end_s] (its decode phase).
    """
    if not records:
        return [], []
    t_end = max(r.end_s for r in records)
    if bin_s is None:
        bin_s = max(t_end / 100.0, 1e-3)
    nbins = max(1, math.ceil(t_end / bin_s))
    tokens = [0.0] * nbins
    for r in records:
        lo, hi = r.first_token_s, max(r.end_s, r.first_token_s)
        if hi <= lo:
            tokens[min(int(lo / bin_s), nbins - 1)] += r.generated_tokens
            continue
        rate = r.generated_tokens / (hi - lo)
        b = int(lo / bin_s)
        while b < nbins and b * bin_s < hi:
            overlap = min(hi, (b + 1) * bin_s) - max(lo, b * bin_s)
            if overlap > 0:
                tokens[b] += rate * overlap
            b += 1
    return [i * bin_s for i in range(nbins)], [t / bin_s for t in tokens]


def build_report(
    records: Sequence[TurnRecord],
    *,
    mode: str,
    slo: SLO = DEFAULT_SLO,
    unfinished_turns: int = 0,
    num_agents: int | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The result object of one run (offline or online) from its finished turns.

    Fields: mode, num_agents, num_turns, unfinished_turns, jct_s (first start to last end),
    agent_jct_s_{mean,p50,p90,p99}, throughput_tok_s ((prompt + generated) tokens / jct_s),
    gen_throughput_tok_s, prompt_tokens_total, generated_tokens_total, cached_tokens_total,
    cached_tokens_fraction, ttft_s_*, ttst_s_*, tpot_s_* ({mean,p50,p90,p99}),
    slo_ttft_s, slo_tpot_s, slo_attainment. `extra` is merged in last.
    """
    recs = list(records)
    agents = {r.agent_id for r in recs}
    if recs:
        t0 = min(r.start_s for r in recs)
        t1 = max(r.end_s for r in recs)
        jct_s = t1 - t0
    else:
        jct_s = math.nan
    prompt_total = sum(r.prompt_tokens for r in recs)
    gen_total = sum(r.generated_tokens for r in recs)
    cached_total = sum(r.cached_tokens for r in recs)
    ttst = [v for v in (r.ttst_s for r in recs) if v is not None]
    tpot = [v for v in (r.tpot_s for r in recs) if v is not None]
    rate_ok = recs and jct_s > 0
    report: dict[str, Any] = {
        "mode": mode,
        "num_agents": num_agents if num_agents is not None else len(agents),
        "num_turns": len(recs),
        "unfinished_turns": unfinished_turns,
        "jct_s": jct_s,
        **distribution(list(agent_jcts_s(recs).values()), "agent_jct_s"),
        "throughput_tok_s": (prompt_total + gen_total) / jct_s if rate_ok else math.nan,
        "gen_throughput_tok_s": gen_total / jct_s if rate_ok else math.nan,
        "prompt_tokens_total": prompt_total,
        "generated_tokens_total": gen_total,
        "cached_tokens_total": cached_total,
        "cached_tokens_fraction": cached_total / prompt_total if prompt_total else math.nan,
        **distribution([r.ttft_s for r in recs], "ttft_s"),
        **distribution(ttst, "ttst_s"),
        **distribution(tpot, "tpot_s"),
        "slo_ttft_s": slo.ttft_s,
        "slo_tpot_s": slo.tpot_s,
        "slo_attainment": slo_attainment(recs, slo, unfinished_turns),
    }
    if extra:
        report.update(extra)
    return report


def records_by_agent(records: Iterable[TurnRecord]) -> dict[int, list[TurnRecord]]:
    """Records grouped by agent, each list in turn order."""
    out: dict[int, list[TurnRecord]] = defaultdict(list)
    for r in records:
        out[r.agent_id].append(r)
    for lst in out.values():
        lst.sort(key=lambda r: r.turn_index)
    return dict(out)
