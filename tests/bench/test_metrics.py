"""Report math: TTFT/TTST/TPOT definitions, percentiles, JCT, SLO attainment."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dualpath.core.errors import UserInputError
from dualpath.workload.metrics import (
    SLO,
    TurnRecord,
    agent_jcts_s,
    build_report,
    percentile,
    slo_attainment,
    throughput_timeline,
)


def rec(agent: int, turn: int, start: float, first: float, end: float, gen: int = 11,
        prompt: int = 100, cached: int = 0) -> TurnRecord:
    second = first + (end - first) / (gen - 1) if gen >= 2 else None
    return TurnRecord(agent, turn, start, first, second, end, prompt, gen, cached)


def test_turn_record_derived_latencies() -> None:
    r = TurnRecord(0, 0, start_s=1.0, first_token_s=1.5, second_token_s=1.6, end_s=2.5,
                   prompt_tokens=10, generated_tokens=11)
    assert r.ttft_s == pytest.approx(0.5)
    assert r.ttst_s == pytest.approx(0.6)
    assert r.tpot_s == pytest.approx(0.1)
    one = TurnRecord(0, 0, 0.0, 1.0, None, 1.0, 10, 1)
    assert one.tpot_s is None and one.ttst_s is None


@pytest.mark.parametrize("q", [0, 1, 25, 50, 90, 99, 100])
def test_percentile_matches_numpy_linear(q: float) -> None:
    rng = np.random.default_rng(3)
    values = list(rng.exponential(2.0, 101))
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_report_percentiles_jct_and_throughput() -> None:
    # 10 turns with TTFT 0.1 .. 1.0 s.
    records = [rec(a, 0, 0.0, 0.1 * (a + 1), 0.1 * (a + 1) + 1.0) for a in range(10)]
    report = build_report(records, mode="offline")
    ttfts = [0.1 * (a + 1) for a in range(10)]
    assert report["ttft_s_p50"] == pytest.approx(float(np.percentile(ttfts, 50)))
    assert report["ttft_s_p90"] == pytest.approx(float(np.percentile(ttfts, 90)))
    assert report["ttft_s_p99"] == pytest.approx(float(np.percentile(ttfts, 99)))
    assert report["tpot_s_p50"] == pytest.approx(0.1)
    assert report["jct_s"] == pytest.approx(2.0)
    assert report["num_agents"] == 10 and report["num_turns"] == 10
    assert report["throughput_tok_s"] == pytest.approx(10 * (100 + 11) / 2.0)
    assert report["gen_throughput_tok_s"] == pytest.approx(10 * 11 / 2.0)


def test_agent_jct_spans_first_start_to_last_end() -> None:
    records = [rec(0, 0, 1.0, 1.2, 2.0), rec(0, 1, 2.0, 2.5, 4.0), rec(1, 0, 0.0, 0.1, 0.5)]
    assert agent_jcts_s(records) == {0: pytest.approx(3.0), 1: pytest.approx(0.5)}


def test_slo_attainment_counts_ttft_and_tpot_and_unfinished() -> None:
    slo = SLO(ttft_s=1.0, tpot_s=0.05)
    ok = rec(0, 0, 0.0, 0.5, 0.5 + 10 * 0.04)           # TTFT 0.5, TPOT 0.04
    slow_first = rec(1, 0, 0.0, 1.5, 1.5 + 10 * 0.04)   # TTFT misses
    slow_decode = rec(2, 0, 0.0, 0.5, 0.5 + 10 * 0.06)  # TPOT misses
    single = rec(3, 0, 0.0, 0.9, 0.9, gen=1)            # no TPOT: TTFT only
    records = [ok, slow_first, slow_decode, single]
    assert slo_attainment(records, slo) == pytest.approx(0.5)
    assert slo_attainment(records, slo, unfinished_turns=4) == pytest.approx(0.25)
    report = build_report(records, mode="online", slo=slo, unfinished_turns=4)
    assert report["slo_attainment"] == pytest.approx(0.25)
    assert report["slo_ttft_s"] == 1.0 and report["slo_tpot_s"] == 0.05


def test_cached_fraction_and_empty_report() -> None:
    report = build_report([rec(0, 0, 0, 1, 2, prompt=200, cached=150)], mode="offline")
    assert report["cached_tokens_fraction"] == pytest.approx(0.75)
    empty = build_report([], mode="online")
    assert math.isnan(empty["jct_s"]) and math.isnan(empty["ttft_s_p50"])
    assert empty["num_turns"] == 0


def test_throughput_timeline_conserves_tokens() -> None:
    records = [rec(a, 0, 0.0, 0.3 * a, 0.3 * a + 2.0, gen=50) for a in range(5)]
    times, rates = throughput_timeline(records, bin_s=0.25)
    assert sum(rates) * 0.25 == pytest.approx(5 * 50)
    assert times[1] - times[0] == pytest.approx(0.25)


def test_slo_rejects_non_positive() -> None:
    with pytest.raises(UserInputError):
        SLO(ttft_s=0.0)
