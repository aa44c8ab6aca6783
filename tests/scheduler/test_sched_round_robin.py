"""Round-robin baseline: turns, cursors kept across calls, DEs without room skipped."""

from __future__ import annotations

from sched_helpers import make_view, reqs

from dualpath.scheduler import GlobalScheduler, SchedulerConfig

BIG = 10**9


def rr(read: str = "pe-only") -> GlobalScheduler:
    # alpha / beta are ignored by round-robin: a tiny beta proves it.
    return GlobalScheduler(SchedulerConfig("round-robin", read, alpha_tokens=0, beta_tokens=0))


def test_turns_ignore_load() -> None:
    view = make_view([[10**6], [0]], [[(0, BIG), (0, BIG)]])
    result = rr().schedule(reqs(*[(100, 50)] * 5), view)
    assert [p.pe_engine for p in result.placements] == [0, 1, 0, 1, 0]
    assert [p.de_engine for p in result.placements] == [2, 3, 2, 3, 2]
    assert all(p.read.side == "pe" and p.read.pe_tokens == 50 for p in result.placements)
    assert result.stop_reason == "queue-drained"


def test_cursor_survives_calls_and_view_changes() -> None:
    s = rr()
    view = make_view([[0, 0, 0]], [[(0, BIG)]])
    assert [p.pe_engine for p in s.schedule(reqs((10, 0), (10, 0)), view).placements] == [0, 1]
    assert [p.pe_engine for p in s.schedule(reqs((10, 0)), view).placements] == [2]
    assert [p.pe_engine for p in s.schedule(reqs((10, 0)), view).placements] == [0]
    # the last engine (id 0) vanished from the view: start again at the first listed.
    smaller = make_view([], [[(0, BIG)]])
    assert s.schedule(reqs((10, 0)), smaller).stop_reason == "no-engines"


def test_skips_decode_engines_without_room_and_waits_when_none() -> None:
    view = make_view([[0]], [[(0, 50), (0, 250)]])
    result = rr().schedule(reqs((100, 0), (100, 0), (100, 0)), view)
    assert [p.de_engine for p in result.placements] == [2, 2]
    assert result.stop_reason == "decode-full"
    assert result.examined == 2


def test_placements_are_a_fifo_prefix() -> None:
    view = make_view([[0]], [[(0, 280)]])
    result = rr().schedule(reqs((200, 0), (50, 0), (50, 0), (10, 0)), view)
    # the third does not fit (30 left); the fourth would, but waits behind it (FIFO).
    assert [p.request_id for p in result.placements] == [0, 1]
    result = rr().schedule(reqs((400, 0), (50, 0)), view)
    assert result.placements == ()


def test_dualpath_rr_uses_shorter_queue() -> None:
    view = make_view([[0]], [[(0, BIG)]], pe_read_q=[500], de_read_q=[0])
    result = rr("shorter-queue").schedule(reqs((300, 200), (300, 200), (300, 200)), view)
    assert [p.read.side for p in result.placements] == ["de", "de", "de"]
    result = rr("shorter-queue").schedule(reqs(*[(300, 200)] * 4), view)
    # DE queue grows 0 -> 200 -> 400 -> 600 > 500: the fourth goes to the PE side.
    assert [p.read.side for p in result.placements][-1] == "pe"
