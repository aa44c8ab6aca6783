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


def test_slowdown_is_computing_engines_over_cores() -> None:
    class _Sim:
        decode = None

    cpu = HostCPU(_Sim(), 2)  # type: ignore[arg-type]
    assert cpu.slowdown == 1.0
    assert cpu.change(0.0, 2) == []  # two engines on two cores: no change, nothing retimed
    cpu.computing += 1
    assert cpu.slowdown == pytest.approx(1.5)
    with pytest.raises(AssertionError):
        cpu.change(0.0, -4)
    with pytest.raises(ValueError):
        HostCPU(_Sim(), 0)  # type: ignore[arg-type]


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
