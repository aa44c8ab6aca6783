"""Link sharing math on hand-computed cases, and event ordering of the loop."""

from __future__ import annotations

from typing import Any

import pytest

from dualpath.sim.events import EventLoop
from dualpath.sim.link import HI, LO, Link


def _run(link: Link, flows: list[tuple[float, float, str, int]]) -> dict[str, float]:
    """Start flows (start_s, bytes, name, cls) on link; return each flow's finish time."""
    loop = EventLoop()
    done: dict[str, float] = {}

    def on_complete(now: float, token: Any) -> None:
        done[token] = now

    link.on_complete = on_complete

    def start(now: float, arg: tuple[float, str, int]) -> Any:
        nbytes, name, cls = arg
        return link.add(now, nbytes, name, cls)

    for t, b, name, cls in flows:
        loop.schedule(t, start, (b, name, cls))
    loop.run()
    return done


def test_single_flow_takes_bytes_over_capacity() -> None:
    done = _run(Link("l", 100.0), [(0.0, 250.0, "a", LO)])
    assert done["a"] == pytest.approx(2.5)


def test_processor_sharing_two_flows() -> None:
    # a: 100 B at t=0, b: 100 B at t=0.5 on a 100 B/s link.
    # 0..0.5: a alone, 50 B done. Then both at 50 B/s: a's last 50 B end at 1.5;
    # b has 50 B left at 1.5 and finishes alone at 2.0.
    done = _run(Link("l", 100.0), [(0.0, 100.0, "a", LO), (0.5, 100.0, "b", LO)])
    assert done["a"] == pytest.approx(1.5)
    assert done["b"] == pytest.approx(2.0)


def test_three_equal_flows_finish_together() -> None:
    done = _run(Link("l", 30.0), [(0.0, 10.0, x, LO) for x in "abc"])
    assert all(v == pytest.approx(1.0) for v in done.values())


def test_high_class_takes_its_weight_low_class_gets_the_rest() -> None:
    # Capacity 100, hi weight 0.9: hi 90 B/s, lo 10 B/s while both run.
    # hi: 90 B -> done at 1.0; lo had 10 B by then, its remaining 90 B at 100 B/s -> 1.9.
    done = _run(Link("l", 100.0, hi_weight=0.9), [(0.0, 90.0, "hi", HI), (0.0, 100.0, "lo", LO)])
    assert done["hi"] == pytest.approx(1.0)
    assert done["lo"] == pytest.approx(1.9)


def test_work_conserving_low_class_alone_gets_full_capacity() -> None:
    done = _run(Link("l", 100.0, hi_weight=0.99), [(0.0, 100.0, "lo", LO)])
    assert done["lo"] == pytest.approx(1.0)


def test_bytes_and_busy_time_accounted() -> None:
    link = Link("l", 100.0, bin_s=1.0)
    _run(link, [(0.0, 150.0, "a", LO), (3.0, 50.0, "b", LO)])
    assert link.bytes_total == pytest.approx(200.0)
    assert link.busy_s == pytest.approx(2.0)
    assert link.timeline[:4] == pytest.approx([100.0, 50.0, 0.0, 50.0])


def test_capacity_change_midway() -> None:
    loop = EventLoop()
    link = Link("l", 100.0)
    done: dict[str, float] = {}
    link.on_complete = lambda now, tok: done.__setitem__(tok, now)
    loop.schedule(0.0, lambda now, _: link.add(now, 100.0, "a"))
    loop.schedule(0.5, lambda now, _: link.set_capacity(now, 50.0))
    loop.run()
    assert done["a"] == pytest.approx(1.5)  # 50 B by 0.5, then 50 B at 50 B/s


def test_event_loop_orders_by_time_then_insertion() -> None:
    loop = EventLoop()
    seen: list[str] = []

    def note(now: float, name: str) -> Any:
        seen.append(name)
        if name == "b":  # a follow-up at the same time runs after everything already queued
            return [(now, note, "b2"), (now - 5.0, note, "b3")]
        return None

    loop.schedule(2.0, note, "c")
    loop.schedule(1.0, note, "a")
    loop.schedule(1.5, note, "b")
    loop.schedule(1.5, note, "b1")
    loop.run()
    assert seen == ["a", "b", "b1", "b2", "b3", "c"]
    assert loop.now_s == 2.0
