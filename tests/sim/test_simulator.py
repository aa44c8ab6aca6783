"""Whole-simulator properties on small clusters: conservation, completion, determinism,
and the scheduler decisions (replayable through a fresh `GlobalScheduler`)."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest

from dualpath.core.errors import ConfigError
from dualpath.core.systems import SYSTEM_NAMES
from dualpath.scheduler.global_scheduler import GlobalScheduler
from dualpath.sim.api import simulate
from dualpath.sim.config import SimConfig
from dualpath.sim.simulator import Simulator
from dualpath.workload.generator import generate


def _agents(n: int, max_len: str = "32k", seed: int = 1, online_gap_s: float = 0.0):
    trajs = generate(max_len, n, seed)
    return [(i * online_gap_s, [(t.append_tokens, t.gen_tokens) for t in tr.turns][:12])
            for i, tr in enumerate(trajs)]


SMALL = SimConfig(model="ds-27b", pd=(1, 1), seed=0)


@pytest.mark.parametrize("system", SYSTEM_NAMES)
def test_every_turn_completes_once_and_every_read_byte_arrives(system: str) -> None:
    agents = _agents(24)
    sim = Simulator(replace(SMALL, system=system), agents)
    done = sim.run()
    assert len(done) == sum(len(t) for _, t in agents)
    assert len({r.rid for r in done}) == len(done)
    # Every byte the scheduler asked storage for crossed an SNIC (none in the oracle).
    asked = sum(r.cached for r in done) * sim.kvb
    read = sum(n.snic.bytes_total for n in sim.nodes)
    assert read == pytest.approx(0.0 if system == "oracle" else asked, rel=1e-9, abs=1.0)
    # ... and nothing is left behind: queues, buffers, engine loads are back to empty.
    for n in sim.nodes:
        assert n.read_q == 0 and not n.read_wait and n.reads_active == 0 and not n.room_wait
        assert n.buf_free == pytest.approx(n.buf_total)
    for e in sim.engines:
        assert (e.seq, e.tok, e.d_n, len(e.ready), e.batch) == (0, 0, 0, 0, [])
    assert not any(g.busy or g.working for g in sim.prefill_groups)
    assert all(g.d_n == 0 and not g.heap for g in sim.decode_groups)
    assert all(r.room != 1 and r.pe_buf_bytes == 0 and r.de_buf_bytes == 0 for r in done)
    # Turn order inside an agent and the causal order inside a turn.
    by_agent: dict[int, list] = {}
    for r in done:
        by_agent.setdefault(r.agent, []).append(r)
        assert r.start_s <= r.placed_s <= r.read_done_s <= r.first_s <= r.end_s
    for turns in by_agent.values():
        turns.sort(key=lambda r: r.turn)
        for a, b in itertools.pairwise(turns):
            assert b.turn == a.turn + 1 and b.start_s >= a.end_s


def test_read_paths_follow_the_system() -> None:
    agents = _agents(24)
    basic = Simulator(replace(SMALL, system="basic"), agents)
    basic.run()
    assert basic.side_counts["de"] == 0
    assert sum(n.snic.bytes_total for n in basic.nodes if n.role == "decode") == 0
    dual = Simulator(replace(SMALL, system="dualpath", read_path="de"), agents)
    dual.run()
    assert dual.side_counts["pe"] == 0
    assert sum(n.snic.bytes_total for n in dual.nodes if n.role == "prefill") == 0


def test_same_seed_same_result() -> None:
    agents = _agents(16, online_gap_s=0.5)
    cfg = replace(SMALL, mode="online", timeline_bin_s=None)
    a = simulate(cfg, agents)
    b = simulate(cfg, agents)
    assert a.records == b.records
    assert a.report["jct_s"] == b.report["jct_s"]


def test_oracle_is_no_slower_and_basic_no_faster_on_a_storage_bound_cluster() -> None:
    agents = _agents(48, "64k")
    jct = {s: simulate(replace(SMALL, system=s, timeline_bin_s=None), agents).report["jct_s"]
           for s in ("basic", "dualpath", "oracle")}
    assert jct["oracle"] <= jct["dualpath"] * 1.01
    assert jct["dualpath"] <= jct["basic"] * 1.01


def test_decisions_replay_through_the_scheduler() -> None:
    """The simulator's logged decisions are exactly what the pure scheduler answers when it is
    given the same inputs; the runtime, driving the same scheduler, is held to this too."""
    agents = _agents(12)
    cfg = replace(SMALL, log_decisions=True, record_scheduler_inputs=True, pd=(1, 2))
    sim = Simulator(cfg, agents)
    sim.run()
    assert sim.decisions and len(sim.sched_inputs) == sim.sched_calls
    fresh = GlobalScheduler(sim.sched_config)
    replayed = []
    for infos, view in sim.sched_inputs:
        for p in fresh.schedule(infos, view).placements:
            replayed.append((p.request_id, p.pe_engine, p.de_engine, p.read.side,
                             p.read.pe_tokens, p.read.de_tokens))
    logged = [tuple(d[1:]) for d in sim.decisions]
    assert replayed == logged


def test_model_that_does_not_fit_is_refused() -> None:
    with pytest.raises(ConfigError):
        Simulator(SimConfig(model="ds-660b", pd=(1, 1)), _agents(1))


def test_split_reads_conserve_bytes_and_use_both_sides() -> None:
    agents = _agents(24, "64k")
    sim = Simulator(replace(SMALL, split_reads=True, pd=(1, 2)), agents)
    done = sim.run()
    assert len(done) == sum(len(t) for _, t in agents)
    assert sim.sched_config.read_policy == "split"
    assert sum(r.cached for r in done) * sim.kvb == pytest.approx(
        sum(n.snic.bytes_total for n in sim.nodes), rel=1e-9)
    assert all(n.buf_free == pytest.approx(n.buf_total) for n in sim.nodes)


def test_progress_reports_finished_turns_up_to_the_total() -> None:
    agents = _agents(6)
    seen: list[tuple[int, int, float]] = []
    sim = Simulator(SMALL, agents)
    sim.run(progress=lambda done, total, now: seen.append((done, total, now)))
    total = sum(len(t) for _, t in agents)
    assert seen and seen[-1][:2] == (total, total)
    assert all(s[1] == total for s in seen)
    assert [s[0] for s in seen] == sorted(s[0] for s in seen)
    assert [s[2] for s in seen] == sorted(s[2] for s in seen)


def test_event_loop_ticks_every_n_events() -> None:
    from dualpath.sim.events import EventLoop

    loop = EventLoop()
    for i in range(10):
        loop.schedule(float(i), lambda now, arg: None)
    ticks: list[float] = []
    loop.run(tick=ticks.append, tick_every=4)
    assert ticks == [3.0, 7.0]  # the 4th and 8th events (times 3 and 7), before they run


def test_simulate_pauses_the_cyclic_gc_and_restores_it() -> None:
    import gc

    from dualpath.sim.api import no_cyclic_gc

    assert gc.isenabled()
    with no_cyclic_gc():
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with no_cyclic_gc():
            pass
        assert not gc.isenabled()  # a caller that had it off keeps it off
    finally:
        gc.enable()
    simulate(SMALL, _agents(2))
    assert gc.isenabled()


def _pd_run(read_path: str, buffer_bytes: float) -> tuple[Simulator, list]:
    from dualpath.sim.hardware import load_hardware

    hw = replace(load_hardware(None), dram_buffer_bytes=buffer_bytes)
    sim = Simulator(replace(SMALL, read_path=read_path, timeline_bin_s=None), _agents(24, "64k"), hw)
    return sim, sim.run()


def test_pe_to_de_stream_waits_for_room_in_a_bounded_decode_buffer() -> None:
    sim, done = _pd_run("pe", 80e9)
    assert sim.transfer.room_waits == 0
    de = [e for e in sim.engines if e.role == "decode"]
    # Every prompt's KV crossed a DE's CNIC twice: the PE's stream in, the copy into HBM.
    prompt_bytes = sum(r.prompt for r in done) * sim.kvb
    assert sum(e.rx.bytes_total for e in de) == pytest.approx(2 * prompt_bytes, rel=1e-9)
    biggest = max(r.prompt for r in done) * sim.kvb
    small, done_small = _pd_run("pe", 1.2 * biggest)
    assert len(done_small) == len(done)
    assert small.transfer.room_waits > 0
    for n in small.nodes:
        assert n.buf_min_free >= 0  # never over the bound (no single prompt exceeds it)
        assert n.buf_free == pytest.approx(n.buf_total)
    assert max(r.end_s for r in done_small) >= max(r.end_s for r in done)


def test_de_path_streams_only_the_miss_back() -> None:
    sim, done = _pd_run("de", 80e9)
    de = [e for e in sim.engines if e.role == "decode"]
    expect = sum(r.miss + r.prompt for r in done) * sim.kvb
    assert sum(e.rx.bytes_total for e in de) == pytest.approx(expect, rel=1e-9)


def test_waiting_queue_reads_the_dict_in_arrival_order_without_copying() -> None:
    from dualpath.sim.state import WaitingQueue

    infos = {rid: f"info{rid}" for rid in (5, 2, 9, 7)}
    q = WaitingQueue(infos)
    assert len(q) == 4 and list(q) == ["info5", "info2", "info9", "info7"]
    assert q[:2] == ["info5", "info2"] and q[:0] == [] and q[:99] == list(q)
    assert q[1] == "info2" and q[-1] == "info7" and q[1:3] == ["info2", "info9"]
    infos[1] = "info1"  # a view, not a copy: the next call sees the queue as it is then
    assert q[-1] == "info1" and len(q) == 5
    with pytest.raises(IndexError):
        q[5]
