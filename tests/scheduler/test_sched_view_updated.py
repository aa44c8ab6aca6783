"""`ClusterView.updated`: the next snapshot of the same cluster, re-validating only changes."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from sched_helpers import make_view

from dualpath.core.errors import SchedulingError
from dualpath.scheduler import ClusterView, GlobalScheduler, RequestInfo
from dualpath.scheduler.config import SchedulerConfig


def _base() -> ClusterView:
    return make_view([[0, 10], [5]], [[(0, 100), (20, 80)], [(0, 50)]])


def test_updated_equals_a_fresh_view_and_shares_the_layout() -> None:
    base = _base()
    engines = list(base.engines)
    engines[1] = replace(engines[1], tok=99, seq=3)
    nodes = list(base.nodes)
    nodes[2] = replace(nodes[2], read_queue_tokens=7)
    view = ClusterView.updated(base, engines, nodes)
    assert view == ClusterView.build(engines, nodes)
    assert view.layout is base.layout
    assert view.engines[1].tok == 99 and view.nodes[2].read_queue_tokens == 7


@pytest.mark.parametrize("change, match", [
    (lambda es, ns: es.__setitem__(0, replace(es[0], engine_id=42)), "changed identity"),
    (lambda es, ns: es.__setitem__(0, replace(es[0], node_id=1)), "changed identity"),
    (lambda es, ns: es.__setitem__(0, replace(es[0], role="decode")), "all prefill or all decode"),
    (lambda es, ns: es.__setitem__(3, replace(es[3], free_kv_tokens=-1)), "negative"),
    (lambda es, ns: es.__setitem__(2, replace(es[2], tok=-5)), "negative"),
    (lambda es, ns: ns.__setitem__(1, replace(ns[1], read_queue_tokens=-1)), "negative read"),
    (lambda es, ns: ns.__setitem__(1, replace(ns[1], node_id=9)), "changed identity"),
    (lambda es, ns: ns.__setitem__(1, replace(ns[1], role="decode")), "changed identity"),
    (lambda es, ns: es.pop(), "added or removed"),
    (lambda es, ns: ns.append(replace(ns[0], node_id=77)), "added or removed"),
])
def test_updated_rejects_what_the_constructor_rejects(change, match) -> None:  # type: ignore[no-untyped-def]
    base = _base()
    engines, nodes = list(base.engines), list(base.nodes)
    change(engines, nodes)
    with pytest.raises(SchedulingError, match=match):
        ClusterView.updated(base, engines, nodes)


def test_decisions_from_updated_views_match_fresh_views() -> None:
    """Two schedulers fed the same counters, one through `updated` views and one through
    fresh ones, make the same decisions call after call (ties and rotations included)."""
    rng = random.Random(3)
    base = make_view([[0] * 4] * 3, [[(0, 4000)] * 4] * 3)
    a, b = GlobalScheduler(SchedulerConfig()), GlobalScheduler(SchedulerConfig())
    prev = base
    for call in range(30):
        engines = [replace(e, tok=rng.choice([0, 0, 100, 500]), seq=rng.randrange(3))
                   if rng.random() < 0.5 else e for e in prev.engines]
        nodes = [replace(n, read_queue_tokens=rng.choice([0, 0, 1000])) if rng.random() < 0.5
                 else n for n in prev.nodes]
        upd = ClusterView.updated(prev, engines, nodes)
        fresh = ClusterView.build(engines, nodes)
        waiting = [RequestInfo(call * 100 + i, rng.randrange(64, 512), 0) for i in range(8)]
        assert a.schedule(waiting, upd) == b.schedule(waiting, fresh)
        prev = upd


def test_only_updated_can_skip_the_constructors_checks() -> None:
    view = make_view([[10]], [[(0, 100)]])
    bad = (replace(view.engines[0], seq=-1), view.engines[1])
    # A layout passed by hand is refused rather than trusted (the checks would be skipped).
    with pytest.raises(SchedulingError, match=r"ClusterView\.updated"):
        ClusterView(bad, view.nodes, view.layout)  # type: ignore[arg-type]
    with pytest.raises(SchedulingError, match="negative"):
        ClusterView.updated(view, bad, view.nodes)
