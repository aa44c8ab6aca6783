"""Property-based tests of the scheduler's invariants (hypothesis).

Every result is replayed decision by decision from the view (`Replay`), so each invariant
is checked against the state that decision actually saw.
"""

from __future__ import annotations

import argparse
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sched_helpers import Replay, by_id, make_view, order_of

from dualpath.bench import scheduler_bench
from dualpath.scheduler import (
    ClusterView,
    EngineState,
    FlopsAttentionPredictor,
    GlobalScheduler,
    PrefillWork,
    RequestInfo,
    SchedulerConfig,
    ScheduleResult,
    alpha_tokens,
    beta_tokens,
    form_prefill_batch,
)

toks = st.integers(0, 3000)
pe_nodes = st.lists(st.lists(toks, min_size=1, max_size=3), min_size=1, max_size=4)
de_nodes = st.lists(st.lists(st.tuples(toks, st.integers(0, 6000)), min_size=1, max_size=3),
                    min_size=1, max_size=4)


@st.composite
def clusters(draw: st.DrawFn) -> ClusterView:
    pe = draw(pe_nodes)
    de = draw(de_nodes)
    # few distinct values, so read-queue ties (and exact-α nodes) happen often
    qs = st.one_of(st.sampled_from([0, 500, 1000]), st.integers(0, 4000))
    return make_view(pe, de, draw(st.lists(qs, min_size=len(pe), max_size=len(pe))),
                     draw(st.lists(qs, min_size=len(de), max_size=len(de))))


@st.composite
def queues(draw: st.DrawFn) -> list[RequestInfo]:
    n = draw(st.integers(0, 25))
    out = []
    for i in range(n):
        prompt = draw(st.integers(1, 1500))
        cached = draw(st.integers(0, prompt))
        out.append(RequestInfo(i, prompt, cached, float(i), draw(st.integers(0, 200))))
    return out


configs = st.builds(
    SchedulerConfig,
    placement=st.sampled_from(["dualpath", "round-robin"]),
    read_policy=st.sampled_from(["pe-only", "de-only", "round-robin", "shorter-queue", "split"]),
    alpha_tokens=st.one_of(st.sampled_from([0, 500, 1000]), st.integers(0, 3000)),
    beta_tokens=st.one_of(st.sampled_from([0, 1000, 3000]), st.integers(0, 3000)),
    split_block_tokens=st.sampled_from([1, 16, 64]),
)


@settings(max_examples=300, deadline=None)
@given(clusters(), queues(), configs)
def test_placement_invariants(view: ClusterView, waiting: list[RequestInfo],
                              cfg: SchedulerConfig) -> None:
    check_invariants(view, waiting, cfg)


@pytest.mark.parametrize("placement", ["dualpath", "round-robin"])
@pytest.mark.parametrize("read_policy", ["shorter-queue", "round-robin", "split"])
def test_invariants_at_paper_scale(placement: str, read_policy: str) -> None:
    """144 groups x 8 engines and 3,000 requests from the benchmark's generator."""
    args = argparse.Namespace(prefill_nodes=48, decode_nodes=96, engines_per_node=8)
    rng = random.Random(7)
    alpha = alpha_tokens(scheduler_bench.STORAGE_BANDWIDTH_BYTES_S,
                         scheduler_bench.KV_BYTES_PER_TOKEN)
    beta = beta_tokens(scheduler_bench.PREFILL_TOKENS_PER_S)
    view, _ = scheduler_bench._view(rng, args, alpha, beta)
    waiting = scheduler_bench._queue(rng, 3000)
    cfg = SchedulerConfig(placement, read_policy, alpha_tokens=alpha, beta_tokens=beta)
    result = check_invariants(view, waiting, cfg)
    assert len(result.placements) > 100


def check_invariants(view: ClusterView, waiting: list[RequestInfo],
                     cfg: SchedulerConfig) -> ScheduleResult:
    """Schedule once and check every invariant against a decision-by-decision replay."""
    result = GlobalScheduler(cfg).schedule(waiting, view)
    reqs = by_id(waiting)
    order = order_of(result, waiting)
    # Arrival order is kept; round-robin places a FIFO prefix.
    assert order == sorted(set(order))
    assert all(i < result.examined for i in order)
    if cfg.placement == "round-robin":
        assert order == list(range(len(order)))
    rp = Replay(view)
    pe_engines = [e for e in view.engines if e.role == "prefill"]
    # A fresh scheduler breaks engine ties in node-interleaved order (each node's first
    # engine, then each node's second, ...); read-side ties alternate, PE side first
    # (round robin: per decode node).
    fair = _interleaved_rank(pe_engines)
    next_tie, next_rr = "pe", {}  # round robin: each decode node's next side
    for p in result.placements:
        r = reqs[p.request_id]
        kv = r.decode_kv_tokens
        # The decode engine had room for the request's KV.
        assert rp.free[p.de_engine] >= kv
        # The read plan covers the cached prefix exactly, on the sides the policy allows.
        plan = p.read
        assert plan.pe_tokens + plan.de_tokens == r.cached_tokens
        assert (plan.pe_node, plan.de_node) == (p.pe_node, p.de_node)
        q_pe, q_de = rp.read_q[p.pe_node], rp.read_q[p.de_node]
        if cfg.read_policy == "pe-only":
            assert plan.side == "pe"
        elif cfg.read_policy == "de-only":
            assert plan.side == "de"
        elif cfg.read_policy == "round-robin" and r.cached_tokens > 0:
            assert plan.side == next_rr.get(p.de_node, "pe")
            next_rr[p.de_node] = "de" if plan.side == "pe" else "pe"
        elif cfg.read_policy == "shorter-queue" and r.cached_tokens > 0:
            # Always the shorter queue; ties alternate.
            if q_pe == q_de:
                assert plan.side == next_tie
                next_tie = "de" if next_tie == "pe" else "pe"
            else:
                assert plan.side == ("de" if q_de < q_pe else "pe")
        elif cfg.read_policy in ("round-robin", "shorter-queue"):
            assert (plan.side, plan.pe_tokens) == ("pe", 0)
        elif plan.side == "split":
            assert plan.pe_tokens % cfg.split_block_tokens == 0
            gap = (q_pe + plan.pe_tokens) - (q_de + plan.de_tokens)
            assert abs(gap) <= cfg.split_block_tokens
        if cfg.placement == "dualpath":
            # No engine above beta gets work; the chosen one is the least-loaded of the best
            # class (C2 before C3), ties to the lower interleaved rank.
            assert rp.tok[p.pe_engine] <= cfg.beta_tokens

            def key(eid: int, node: int) -> tuple[int, int, int]:
                cls = 2 if rp.read_q[node] <= cfg.alpha_tokens else 3
                return (cls, rp.tok[eid], fair[eid])

            open_pes = [key(e.engine_id, e.node_id) for e in pe_engines
                        if rp.tok[e.engine_id] <= cfg.beta_tokens]
            assert key(p.pe_engine, p.pe_node) == min(open_pes)
        rp.apply(r, p.pe_engine, p.de_engine, p.pe_node, p.de_node, plan.pe_tokens,
                 plan.de_tokens)
    assert all(v >= 0 for v in rp.free.values())
    if result.stop_reason == "prefill-full":
        assert all(rp.tok[e.engine_id] > cfg.beta_tokens for e in pe_engines)
    if result.stop_reason == "queue-drained":
        assert result.examined == len(waiting)
    return result


def _interleaved_rank(engines: list[EngineState]) -> dict[int, int]:
    nodes: dict[int, list[int]] = {}
    for e in engines:
        nodes.setdefault(e.node_id, []).append(e.engine_id)
    order = [ids[k] for k in range(max(map(len, nodes.values()), default=0))
             for ids in nodes.values() if k < len(ids)]
    return {eid: i for i, eid in enumerate(order)}


PRED = FlopsAttentionPredictor(4, 8, 16, flops_per_s=5e8, overhead_s=0.002)

works = st.lists(
    st.tuples(st.integers(0, 5000), st.integers(1, 3000)), min_size=0, max_size=12
).map(lambda xs: [PrefillWork(i, c, n) for i, (c, n) in enumerate(xs)])


@settings(max_examples=200, deadline=None)
@given(works, st.floats(0.001, 2.0), st.sampled_from([1, 16, 64]))
def test_batches_within_quota_and_chunks_sum_to_tokens(queue: list[PrefillWork], quota: float,
                                                       align: int) -> None:
    done: dict[object, int] = {}
    pending = list(queue)
    finished: list[object] = []
    for _ in range(100_000):
        if not pending:
            break
        plan = form_prefill_batch(pending, quota, PRED, align_tokens=align)
        assert plan.items, "a batch always makes progress"
        # FIFO: the batch is a prefix of the queue.
        assert [i.request_id for i in plan.items] == [w.request_id for w in pending[:len(plan.items)]]
        assert abs(plan.predicted_s - PRED.predict_s(
            [(i.context_tokens, i.chunk_tokens) for i in plan.items])) < 1e-9
        if plan.over_quota:
            assert len(plan.items) == 1
            assert plan.items[0].chunk_tokens == min(align, pending[0].remaining_tokens)
        else:
            assert plan.predicted_s <= quota
        for item in plan.items:
            if not item.last_chunk:
                assert item.chunk_tokens % align == 0
        nxt: list[PrefillWork] = []
        for work, item in zip(pending, plan.items, strict=False):
            assert item.context_tokens == work.context_tokens
            done[work.request_id] = done.get(work.request_id, 0) + item.chunk_tokens
            if item.last_chunk:
                finished.append(work.request_id)
            else:
                nxt.append(PrefillWork(work.request_id, work.cached_tokens, work.new_tokens,
                                       work.already_prefilled_tokens + item.chunk_tokens))
        pending = nxt + pending[len(plan.items):]
    assert not pending
    assert finished == [w.request_id for w in queue]
    assert done == {w.request_id: w.new_tokens for w in queue}
