"""Profiled engines sharing one host's cores (`HardwareSpec.host_cores`, `sim.cpu.HostCPU`)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from profiled_hw import PROFILED_HW as HW

from dualpath.model.presets import preset_config
from dualpath.sim.api import simulate
from dualpath.sim.config import SimConfig
from dualpath.sim.cpu import HostCPU
from dualpath.sim.hardware import hardware_from_dict
from dualpath.sim.model_cost import model_cost_of_config


def _run(system: str, pd: tuple[int, int], agents: list[tuple[Any, ...]],
         cores: float) -> dict[str, Any]:
    hw = hardware_from_dict({**HW, "host_cores": cores} if cores else HW)
    cfg = SimConfig(model="ds-27b", system=system, pd=pd, timeline_bin_s=None, block_tokens=64,
                    sched_interval_s=0.0, ep_group_gpus=(1, 1), prefill_batch_requests=1)
    model = model_cost_of_config(preset_config("tiny", seed=0))
    return simulate(cfg, agents, hardware=hw, model=model).report


def test_a_lone_engine_on_half_a_core_takes_twice_its_profiled_time() -> None:
    # One agent, one turn: the prefill engine computes alone, then the decode engine does.
    agents = [(0.0, [(1000, 40)])]
    own = _run("oracle", (1, 1), agents, 0)
    half = _run("oracle", (1, 1), agents, 0.5)
    assert half["tpot_s_p50"] == pytest.approx(2 * own["tpot_s_p50"], rel=1e-9)
    assert half["ttft_s_p50"] == pytest.approx(2 * own["ttft_s_p50"], rel=1e-6)


def test_enough_cores_change_nothing() -> None:
    agents = [(0.1 * i, [(900 + 50 * i, 20), (64, 20), (64, 20)]) for i in range(8)]
    for system in ("basic", "dualpath", "oracle"):
        own = _run(system, (1, 2), agents, 0)
        many = _run(system, (1, 2), agents, 3)  # never more than 3 engines compute
        wall = ("sim_wall_s", "sim_events_per_s")
        same = [json.dumps({k: v for k, v in r.items() if k not in wall}, sort_keys=True)
                for r in (many, own)]  # through JSON: NaN (no storage reads) equals NaN
        assert same[0] == same[1], system


def test_engines_computing_together_on_too_few_cores_slow_each_other() -> None:
    # 16 agents over 1P2D: the decode engines decode while the prefill engine prefills the
    # next turns, three engines on two cores.
    agents = [(0.05 * i, [(2000 + 64 * i, 30)] + [(128, 30)] * 3) for i in range(16)]
    own = _run("oracle", (1, 2), agents, 0)
    shared = _run("oracle", (1, 2), agents, 2)
    assert shared["jct_s"] > own["jct_s"]
    assert shared["tpot_s_p50"] > own["tpot_s_p50"]
    assert shared["num_turns"] == own["num_turns"] == 64


class _Decode:
    def __init__(self) -> None:
        self.retimed = 0

    def retime_all(self, now: float, skip: Any) -> list[Any]:
        self.retimed += 1
        return [("retimed", now)]


class _Sim:
    def __init__(self) -> None:
        self.decode = _Decode()


def test_slowdown_is_computing_engines_over_cores() -> None:
    sim = _Sim()
    cpu = HostCPU(sim, 2)  # type: ignore[arg-type]
    assert cpu.slowdown == 1.0
    assert cpu.change(0.0, 2) == []  # two engines on two cores: no change, nothing retimed
    assert cpu.change(1.0, 1) == [("retimed", 1.0)]
    assert cpu.slowdown == pytest.approx(1.5)
    with pytest.raises(AssertionError):
        cpu.change(0.0, -4)
    with pytest.raises(ValueError):
        HostCPU(sim, 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        HostCPU(sim, 2, frontend_s_per_token=-1.0)  # type: ignore[arg-type]


def test_front_end_per_token_load_solves_the_processor_sharing_fixed_point() -> None:
    sim = _Sim()
    cpu = HostCPU(sim, 2, frontend_s_per_token=1e-3)  # type: ignore[arg-type]
    # Two decode engines of batch 5 and 2 ms profiled steps: 5,000 tokens/s at full speed,
    # 5 cores' worth of front end at 1 ms a token: far over the two cores.
    cpu.change(0.0, 2, token_q=5 / 2e-3 * 2)
    s = cpu.slowdown
    assert s > 1
    # The cores are exactly shared: engines plus the front end's load at the slowed rate.
    assert s * 2 == pytest.approx(2 + 1e-3 * 5000 / s)
    # Under the cores the front end slows nothing: one engine and 0.5 cores of front end.
    light = HostCPU(sim, 2, frontend_s_per_token=1e-4)  # type: ignore[arg-type]
    assert light.change(0.0, 1, token_q=5000.0) == [] and light.slowdown == 1.0
    assert light.change(0.0, 0, token_q=-5000.0) == [] and light.token_q == 0.0


def test_a_cpu_job_is_one_more_engine_until_it_ends() -> None:
    sim = _Sim()
    cpu = HostCPU(sim, 1)  # type: ignore[arg-type]
    cpu.change(0.0, 1)
    events = cpu.job(0.0, 0.5)  # two computing on one core: the job takes twice as long
    assert events[0] == ("retimed", 0.0) and events[-1][0] == pytest.approx(1.0)
    assert cpu.computing == 2
    events[-1][1](1.0, None)
    assert cpu.computing == 1 and cpu.slowdown == 1.0
    assert cpu.job(2.0, 0.0) == [] and cpu.computing == 1


def _run_hw(agents: list[tuple[Any, ...]], system: str = "oracle", **fields: float) -> dict[str, Any]:
    hw = hardware_from_dict({**HW, **fields})
    cfg = SimConfig(model="ds-27b", system=system, pd=(1, 2), timeline_bin_s=None,
                    block_tokens=64, sched_interval_s=0.0, ep_group_gpus=(1, 1),
                    prefill_batch_requests=1)
    model = model_cost_of_config(preset_config("tiny", seed=0))
    return simulate(cfg, agents, hardware=hw, model=model).report


def test_the_front_end_per_token_cpu_slows_decoding_only_on_full_cores() -> None:
    agents = [(0.02 * i, [(1000 + 64 * i, 80), (64, 80)]) for i in range(12)]
    base = _run_hw(agents, host_cores=2)
    fe = _run_hw(agents, host_cores=2, frontend_cpu_s_per_token=1e-3)
    assert fe["tpot_s_p50"] > base["tpot_s_p50"] and fe["jct_s"] > base["jct_s"]
    # Four cores hold the three engines and this front end: nothing changes.
    spare = [_run_hw(agents, host_cores=4, frontend_cpu_s_per_token=f)["jct_s"] for f in (0, 1e-5)]
    assert spare[0] == spare[1]
    turn = _run_hw(agents, host_cores=2, frontend_cpu_s_per_turn=0.05)
    assert turn["jct_s"] > base["jct_s"]
    assert fe["num_turns"] == turn["num_turns"] == base["num_turns"] == 24


@pytest.mark.parametrize("system", ["basic", "dualpath", "oracle"])
def test_engines_reading_and_sending_kv_are_charged_every_byte(system: str, monkeypatch) -> None:
    # Every turn after the first finds its prefix stored. Each read (timed, or free I/O for
    # oracle) costs its bytes as stored (KV + one header per block) x the read rate; every
    # prompt token's KV is sent exactly once (PE to DE, or a DE-read prefix DE to PE).
    works: list[float] = []
    job = HostCPU.job

    def recording(self: HostCPU, now: float, work_s: float) -> list[Any]:
        works.append(work_s)
        return job(self, now, work_s)

    monkeypatch.setattr(HostCPU, "job", recording)
    agents = [(0.02 * i, [(1500 + 64 * i, 30), (64, 30), (64, 30)]) for i in range(8)]
    header, kvb = 4096, 768  # the tiny model's KV bytes per token

    def run(**fields: float) -> tuple[dict[str, Any], float]:
        works.clear()
        hw = hardware_from_dict({**HW, "host_cores": 2, **fields})
        cfg = SimConfig(model="ds-27b", system=system, pd=(1, 2), timeline_bin_s=None,
                        block_tokens=64, sched_interval_s=0.0, ep_group_gpus=(1, 1),
                        prefill_batch_requests=1, block_header_bytes=header)
        model = model_cost_of_config(preset_config("tiny", seed=0))
        return simulate(cfg, agents, hardware=hw, model=model).report, sum(works)

    read, read_work = run(engine_read_cpu_s_per_byte=1e-9)
    cached = read["cached_tokens_total"]
    assert cached > 0 and read["num_turns"] == 24
    assert read_work == pytest.approx(cached * (kvb + header / 64) * 1e-9, rel=1e-9)
    if system != "oracle":  # the SNICs moved the headers too
        moved = read["bytes_read_pe_path"] + read["bytes_read_de_path"]
        assert moved == pytest.approx(cached * (kvb + header / 64))
    _, send_work = run(engine_send_cpu_s_per_byte=1e-9)
    # Prompts: the first turn's, then the context so far (prompt + 30 answer tokens) + 64.
    prompts = sum(3 * first + 2 * (30 + 64) + (30 + 64) for _, ((first, _), *_) in agents)
    assert send_work == pytest.approx(prompts * kvb * 1e-9, rel=1e-9)
    _, turn_work = run(frontend_cpu_s_per_turn=0.01)
    assert turn_work == pytest.approx(24 * 0.01)
    _, none = run()
    assert none == 0.0


def _run_kv(agents: list[tuple[Any, ...]], cores: float, kv_s: float,
            persist_s: float) -> dict[str, Any]:
    hw = hardware_from_dict({**HW, "host_cores": cores, "de_kv_cpu_s_per_byte": kv_s,
                             "de_persist_cpu_s_per_byte": persist_s})
    cfg = SimConfig(model="ds-27b", system="oracle", pd=(1, 2), timeline_bin_s=None,
                    block_tokens=64, sched_interval_s=0.0, ep_group_gpus=(1, 1),
                    prefill_batch_requests=1)
    model = model_cost_of_config(preset_config("tiny", seed=0))
    return simulate(cfg, agents, hardware=hw, model=model).report


def test_moving_kv_on_the_decode_engines_takes_the_shared_cores() -> None:
    # Long decodes on both DEs while later turns' KV arrives: the KV work is one more
    # engine's worth of computing on two cores, so decoding slows; with cores to spare
    # (4: PE, two DEs and the KV work never need more) it changes nothing.
    agents = [(0.05 * i, [(1500 + 64 * i, 60), (128, 60)]) for i in range(8)]
    base = _run_kv(agents, 2, 0.0, 0.0)
    kv = _run_kv(agents, 2, 2e-9, 0.0)
    persist = _run_kv(agents, 2, 0.0, 2e-9)
    assert kv["tpot_s_p50"] > base["tpot_s_p50"] and kv["jct_s"] > base["jct_s"]
    assert persist["jct_s"] > base["jct_s"]
    # Only the first turn persists a fresh prompt's blocks: less work than every prompt's KV.
    assert persist["jct_s"] < kv["jct_s"]
    spare = [_run_kv(agents, 4, a, b)["jct_s"] for a, b in ((0.0, 0.0), (2e-9, 2e-9))]
    assert spare[0] == spare[1]
    assert base["num_turns"] == kv["num_turns"] == 16
