"""DE selection: phase 1 (smallest group Σtok_e), phase 2 (R, Z, fewest seq_e), room, stops."""

from __future__ import annotations

import pytest
from sched_helpers import make_view, reqs

from dualpath.scheduler import GlobalScheduler, SchedulerConfig
from dualpath.scheduler.decode_select import group_targets, phase2_pick
from dualpath.scheduler.virtual import VirtualCluster

BIG = 10**9


def sched(z: float = 1.05) -> GlobalScheduler:
    return GlobalScheduler(SchedulerConfig("dualpath", "shorter-queue", z_margin=z))


def des(result: object) -> list[int]:
    return [p.de_engine for p in result.placements]  # type: ignore[attr-defined]


def test_phase1_smallest_group_sum_then_charges_it() -> None:
    # PE engine 0; group A (node 1) engines 1, 2 sum 1000; group B (node 2) engines 3, 4 sum 500.
    view = make_view([[0]], [[(500, BIG), (500, BIG)], [(250, BIG), (250, BIG)]])
    result = sched().schedule(reqs((400, 0), (400, 0), (400, 0)), view)
    # B (500) gets the first; B (900) < A (1000) gets the second; then B (1300) > A.
    assert [p.de_node for p in result.placements] == [2, 2, 1]


def test_phase2_fewest_seq_among_engines_under_z() -> None:
    # toks 100, 200, 900; Z = 1.05 * (100 + 1200) / 3 = 455: engines 1, 2 are under Z
    # after adding the request; engine 2 (tok 200) has the fewer sequences.
    view = make_view([[0]], [[(100, BIG), (200, BIG), (900, BIG)]], seqs={1: 5, 2: 1, 3: 0})
    assert des(sched().schedule(reqs((100, 0)), view)) == [2]


def test_phase2_least_tok_when_nobody_is_under_z() -> None:
    # Z = 1.05 * 3100 / 3 = 1085; every tok + 100 exceeds it, so least tok wins (seq ignored).
    view = make_view([[0]], [[(1000, BIG), (990, BIG), (1010, BIG)]], seqs={1: 0, 2: 5, 3: 0})
    assert des(sched().schedule(reqs((100, 0)), view)) == [2]


def test_phase2_skips_engines_without_room() -> None:
    view = make_view([[0]], [[(0, 99), (500, 1000)]])
    assert des(sched().schedule(reqs((100, 0)), view)) == [2]


def test_decode_reserve_counts_as_kv() -> None:
    view = make_view([[0]], [[(0, 150), (500, 1000)]])
    assert des(sched().schedule(reqs((100, 0), reserve=51), view)) == [2]


def test_group_without_room_stops_but_others_go_on() -> None:
    # Group A (node 1) has the least tokens but room for 100 only; group B has plenty.
    view = make_view([[0]], [[(0, 100)], [(1000, BIG)]])
    waiting = reqs((200, 0), (50, 0), (50, 0))
    result = sched().schedule(waiting, view)
    # request 0 -> A (no room: A stops); request 1 -> A again (Σtok 200 < 1000): skipped
    # because A stopped; request 2 -> A (250) still smallest: skipped.
    assert result.placements == ()
    assert result.stop_reason == "queue-drained"
    view2 = make_view([[0]], [[(0, 100)], [(100, BIG)]])
    result2 = sched().schedule(waiting, view2)
    # request 0 -> A (stops A); request 1 -> B (Σ 100 < 200); request 2 -> B (150 < 200).
    assert [p.request_id for p in result2.placements] == [1, 2]
    assert des(result2) == [2, 2]


def test_every_group_stopped_is_decode_full() -> None:
    view = make_view([[0]], [[(0, 10)], [(0, 10)]])
    result = sched().schedule(reqs((100, 0), (100, 0), (100, 0)), view)
    assert result.placements == ()
    assert result.stop_reason == "decode-full"
    assert result.examined == 2


def test_free_kv_updated_within_a_call() -> None:
    view = make_view([[0]], [[(0, 250)]])
    result = sched().schedule(reqs((100, 0), (100, 0), (100, 0)), view)
    assert des(result) == [1, 1]
    assert result.stop_reason == "decode-full"


def test_group_targets_use_fifo_prefix_that_fits() -> None:
    view = make_view([[0]], [[(100, 300), (200, 300)]])
    vc = VirtualCluster(view)
    # free 600 in all. Routed 250, 250, 50: all fit (550). Routed 250, 400, 50: 400 does not
    # fit after 250, and R is a FIFO prefix, so the later 50 is not in R either.
    z = group_targets(vc, [1], [1, 1, 1], [250, 250, 50], 1.05)
    assert z[1] == pytest.approx(1.05 * (550 + 300) / 2)
    z = group_targets(vc, [1], [1, 1, 1], [250, 400, 50], 1.05)
    assert z[1] == pytest.approx(1.05 * (250 + 300) / 2)


def test_phase2_pick_none_without_room() -> None:
    vc = VirtualCluster(make_view([[0]], [[(0, 10), (0, 20)]]))
    assert phase2_pick(vc, 1, 21, 1e9) is None
    assert phase2_pick(vc, 1, 20, 1e9) == 2


def test_z_margin_changes_the_choice() -> None:
    # Z at 1.05 = 1.05 * (100 + 0 + 190) / 2 = 152.25: engine A (tok 0, seq 3) and B (tok 190,
    # seq 0): only A is under Z -> A. With a margin of 2.0, Z = 290 and B (fewer seq) wins.
    view = make_view([[0]], [[(0, BIG), (190, BIG)]], seqs={1: 3, 2: 0})
    assert des(sched(1.05).schedule(reqs((100, 0)), view)) == [1]
    assert des(sched(2.0).schedule(reqs((100, 0)), view)) == [2]


def test_z_counts_the_whole_fitting_queue() -> None:
    # Engines A (tok 0, seq 3) and B (tok 100, seq 0); three requests of 100 tokens.
    # Z = 1.05 * (300 + 100) / 2 = 210 from the whole routed queue, so for the first request
    # both are under Z and B (fewer seq) wins; a Z from the head request alone (105) would
    # have left only A. Then B (200) + 100 > Z: A takes the other two.
    view = make_view([[0]], [[(0, BIG), (100, BIG)]], seqs={1: 3, 2: 0})
    assert des(sched().schedule(reqs((100, 0), (100, 0), (100, 0)), view)) == [2, 1, 1]
    # With only one waiting request, Z = 105 and A is the only engine under it.
    assert des(sched().schedule(reqs((100, 0)), view)) == [1]
