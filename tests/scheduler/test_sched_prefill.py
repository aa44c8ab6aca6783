"""PE selection of the dualpath placement: classes C1/C2/C3, least tok_e, ties, updates."""

from __future__ import annotations

from sched_helpers import make_view, reqs

from dualpath.scheduler import GlobalScheduler, SchedulerConfig

BIG = 10**9
ROOMY_DE = [[(0, BIG)]]


def sched(alpha: int = 1000, beta: int = 10_000, read: str = "shorter-queue") -> GlobalScheduler:
    return GlobalScheduler(SchedulerConfig("dualpath", read, alpha_tokens=alpha, beta_tokens=beta))


def pes(result: object) -> list[int]:
    return [p.pe_engine for p in result.placements]  # type: ignore[attr-defined]


def test_c2_beats_c3_even_with_more_tokens() -> None:
    # node 0 is above alpha (C3) with an idle engine; node 1 is under alpha (C2) but busier.
    view = make_view([[0], [500]], ROOMY_DE, pe_read_q=[1001, 1000], de_read_q=[BIG])
    assert pes(sched().schedule(reqs((100, 0)), view)) == [1]


def test_least_tok_within_a_class() -> None:
    view = make_view([[500, 200, 300]], ROOMY_DE)
    assert pes(sched().schedule(reqs((100, 0)), view)) == [1]


def test_tie_goes_to_engine_listed_first() -> None:
    view = make_view([[300, 200, 200]], ROOMY_DE)
    assert pes(sched().schedule(reqs((100, 0)), view)) == [1]


def test_tok_updated_within_a_call() -> None:
    view = make_view([[0, 0]], ROOMY_DE)
    result = sched().schedule(reqs((100, 0), (100, 0), (100, 0), (50, 0)), view)
    assert pes(result) == [0, 1, 0, 1]


def test_overloaded_engine_gets_nothing_and_beta_is_inclusive() -> None:
    view = make_view([[10_001, 10_000]], ROOMY_DE)
    result = sched(beta=10_000).schedule(reqs((100, 0), (100, 0)), view)
    # engine 1 sits exactly at beta: still eligible once, then above beta (C1).
    assert pes(result) == [1]
    assert result.stop_reason == "prefill-full"
    assert result.examined == 1


def test_all_overloaded_places_nothing() -> None:
    view = make_view([[20_000], [30_000]], ROOMY_DE)
    result = sched(beta=10_000).schedule(reqs((100, 0)), view)
    assert result.placements == ()
    assert result.stop_reason == "prefill-full"
    assert result.examined == 0


def test_alpha_is_inclusive_for_c2() -> None:
    view = make_view([[100], [0]], ROOMY_DE, pe_read_q=[1000, 1001], de_read_q=[BIG])
    assert pes(sched(alpha=1000).schedule(reqs((10, 0)), view)) == [0]


def test_read_queue_growth_moves_node_to_c3_within_a_call() -> None:
    # node 0 starts in C2 (900 <= alpha); node 1 in C3. The DE queue is huge, so reads go
    # to the PE side: after the first request node 0 holds 1400 > alpha and both are C3,
    # where node 1's engine has fewer tokens.
    view = make_view([[100], [50]], ROOMY_DE, pe_read_q=[900, 5000], de_read_q=[BIG])
    result = sched(alpha=1000).schedule(reqs((600, 500), (600, 500)), view)
    assert pes(result) == [0, 1]
    assert [p.read.side for p in result.placements] == ["pe", "pe"]


def test_only_c3_engines_still_get_work() -> None:
    view = make_view([[300], [200]], ROOMY_DE, pe_read_q=[5000, 5000], de_read_q=[BIG])
    assert pes(sched(alpha=1000).schedule(reqs((10, 0)), view)) == [1]


def test_empty_queue() -> None:
    result = sched().schedule([], make_view([[0]], ROOMY_DE))
    assert result.placements == ()
    assert result.stop_reason == "queue-drained"
    assert result.examined == 0


def test_no_engines_of_a_role() -> None:
    result = sched().schedule(reqs((10, 0)), make_view([], ROOMY_DE))
    assert result.stop_reason == "no-engines"
    assert result.placements == ()


def test_deterministic() -> None:
    view = make_view([[0, 300, 20], [5, 0]], [[(0, 5000), (10, 5000)], [(40, 9000)]],
                     pe_read_q=[100, 2000], de_read_q=[50, 3000])
    waiting = reqs(*[(100 + 37 * i, 64 * (i % 3)) for i in range(40)])
    a = sched().schedule(waiting, view)
    b = sched().schedule(waiting, view)
    assert a == b
    assert len(a.placements) > 0


def test_drained_cluster_spreads_ties_over_nodes_engines_and_sides() -> None:
    """One request per call on an idle cluster (the drain phase): every PE, PE node, decode
    group and read side takes its turn, instead of the lowest ids and the PE side winning
    every tie."""
    s = sched(alpha=1000)
    view = make_view([[0, 0], [0, 0]], [[(0, BIG), (0, BIG)], [(0, BIG), (0, BIG)]])
    placed = [s.schedule(reqs((100, 64)), view).placements[0] for _ in range(8)]
    assert [p.pe_engine for p in placed] == [0, 2, 1, 3, 0, 2, 1, 3]
    assert [p.read.side for p in placed] == ["pe", "de"] * 4
    assert sorted(p.de_node for p in placed) == [2] * 4 + [3] * 4
    assert len({p.de_engine for p in placed}) == 4
