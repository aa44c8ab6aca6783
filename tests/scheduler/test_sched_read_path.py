"""Read-path policies: PE-only, DE-only, shorter queue (ties), split (beyond the paper)."""

from __future__ import annotations

import pytest
from sched_helpers import make_view, reqs

from dualpath.core.errors import ConfigError
from dualpath.scheduler import GlobalScheduler, RequestInfo, SchedulerConfig, make_read_policy
from dualpath.scheduler.read_path import split_pe_tokens

R = RequestInfo("r", 1000, 640)


@pytest.mark.parametrize(("name", "pe_q", "de_q", "side", "pe_t", "de_t"), [
    ("pe-only", 0, 10**6, "pe", 640, 0),
    ("pe-only", 10**6, 0, "pe", 640, 0),
    ("de-only", 0, 10**6, "de", 0, 640),
    ("shorter-queue", 100, 99, "de", 0, 640),
    ("shorter-queue", 99, 100, "pe", 640, 0),
    ("shorter-queue", 100, 100, "pe", 640, 0),  # tie -> the classic PE path
])
def test_single_side_policies(name: str, pe_q: int, de_q: int, side: str, pe_t: int,
                              de_t: int) -> None:
    plan = make_read_policy(name)(R, 7, 9, pe_q, de_q, 64)
    assert (plan.side, plan.pe_tokens, plan.de_tokens) == (side, pe_t, de_t)
    assert (plan.pe_node, plan.de_node, plan.request_id) == (7, 9, "r")


def test_split_levels_both_queues_in_whole_blocks() -> None:
    # 640 cached, pe_q 100, de_q 300: ideal x = (640 + 300 - 100) / 2 = 420 -> 448 (7 blocks).
    plan = make_read_policy("split")(R, 0, 1, 100, 300, 64)
    assert plan.side == "split"
    assert (plan.pe_tokens, plan.de_tokens) == (448, 192)


def test_split_degrades_to_one_side() -> None:
    split = make_read_policy("split")
    assert split(R, 0, 1, 0, 10**6, 64).side == "pe"
    de_plan = split(R, 0, 1, 10**6, 0, 64)
    assert (de_plan.side, de_plan.de_tokens) == ("de", 640)
    empty = split(RequestInfo("e", 10, 0), 0, 1, 5, 0, 64)
    assert (empty.pe_tokens, empty.de_tokens) == (0, 0)


@pytest.mark.parametrize(("cached", "pe_q", "de_q", "block", "expected"), [
    (640, 0, 0, 64, 320),
    (640, 0, 0, 1, 320),
    (100, 0, 0, 64, 64),     # ideal 50 rounds to one block
    (100, 0, 0, 128, 0),     # ideal 50 rounds to zero blocks
    (640, 640, 0, 64, 0),    # PE queue already longer by the whole read
    (640, 0, 640, 64, 640),
])
def test_split_pe_tokens(cached: int, pe_q: int, de_q: int, block: int, expected: int) -> None:
    assert split_pe_tokens(cached, pe_q, de_q, block) == expected


def test_unknown_policy() -> None:
    with pytest.raises(ConfigError, match="shorter-queue"):
        make_read_policy("fastest")


def test_chosen_read_is_charged_to_later_decisions() -> None:
    # One PE node (read_q 0) and one DE node (read_q 150). Each request reads 100 tokens; the
    # shorter side alternates as the charged queue grows: pe (0->100), pe (100->200; 100 < 150),
    # de (150 < 200 -> 250), pe (200 < 250).
    view = make_view([[0]], [[(0, 10**9)]], pe_read_q=[0], de_read_q=[150])
    s = GlobalScheduler(SchedulerConfig("dualpath", "shorter-queue"))
    result = s.schedule(reqs(*[(200, 100)] * 4), view)
    assert [p.read.side for p in result.placements] == ["pe", "pe", "de", "pe"]


def test_shorter_queue_ties_alternate_sides() -> None:
    policy = make_read_policy("shorter-queue")
    sides = [policy(R, 0, 1, q, q, 64).side for q in (0, 5, 0, 0)]
    assert sides == ["pe", "de", "pe", "de"]
    # A strict winner does not move the tie cursor; an empty prefix reads nothing anywhere.
    assert policy(R, 0, 1, 1, 0, 64).side == "de"
    empty = policy(RequestInfo("e", 10, 0), 0, 1, 3, 3, 64)
    assert (empty.side, empty.pe_tokens, empty.de_tokens) == ("pe", 0, 0)
    assert policy(R, 0, 1, 7, 7, 64).side == "pe"


def test_round_robin_side_alternates_whatever_the_queues() -> None:
    policy = make_read_policy("round-robin")
    got = [policy(R, 0, 1, pe_q, de_q, 64) for pe_q, de_q in ((0, 10**6), (10**6, 0), (0, 0))]
    assert [(p.side, p.pe_tokens, p.de_tokens) for p in got] == [
        ("pe", 640, 0), ("de", 0, 640), ("pe", 640, 0)]
    assert policy(RequestInfo("e", 10, 0), 0, 1, 0, 0, 64).side == "pe"  # reads nothing
    assert policy(R, 0, 1, 0, 0, 64).side == "de"


def test_each_scheduler_has_its_own_cursor() -> None:
    a, b = make_read_policy("round-robin"), make_read_policy("round-robin")
    assert a(R, 0, 1, 0, 0, 64).side == "pe"
    assert b(R, 0, 1, 0, 0, 64).side == "pe"


def test_dualpath_rr_alternates_sides_through_the_scheduler() -> None:
    from dualpath.core.systems import system_spec
    from dualpath.scheduler import scheduler_config_for_system

    cfg = scheduler_config_for_system(system_spec("dualpath-rr"))
    view = make_view([[0]], [[(0, 10**9)]], pe_read_q=[0], de_read_q=[10**6])
    s = GlobalScheduler(cfg)
    first = [p.read.side for p in s.schedule(reqs(*[(200, 100)] * 3), view).placements]
    second = [p.read.side for p in s.schedule(reqs(*[(200, 100)] * 2), view).placements]
    assert first + second == ["pe", "de", "pe", "de", "pe"]


def test_dualpath_rr_spreads_de_side_reads_over_every_decode_node() -> None:
    """Round-robin placement over two decode nodes and a side cursor per decode node: each
    decode node alternates, so both get DE-side reads (one shared cursor sent all of them to
    the first decode node)."""
    from dualpath.core.systems import system_spec
    from dualpath.scheduler import scheduler_config_for_system

    view = make_view([[0]], [[(0, 10**9)], [(0, 10**9)]])
    s = GlobalScheduler(scheduler_config_for_system(system_spec("dualpath-rr")))
    placements = s.schedule(reqs(*[(200, 100)] * 8), view).placements
    de_side = [p.read.de_node for p in placements if p.read.side == "de"]
    assert len(de_side) == 4 and sorted(set(de_side)) == [1, 2], placements
