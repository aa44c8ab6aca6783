"""Configuration: α/β helpers, the --system mapping, registry names, view validation."""

from __future__ import annotations

import pytest
from sched_helpers import make_view

from dualpath.core.errors import ConfigError, SchedulingError
from dualpath.core.systems import SYSTEM_NAMES, system_spec
from dualpath.scheduler import (
    POLICIES,
    ClusterView,
    EngineState,
    GlobalScheduler,
    NodeState,
    RequestInfo,
    SchedulerConfig,
    alpha_tokens,
    beta_tokens,
    scheduler_config_for_system,
)


def test_alpha_is_three_seconds_of_storage_reads() -> None:
    # 50 GB/s SNIC, 40,016 bytes per token: 3 s = 150e9 bytes.
    assert alpha_tokens(50e9, 40_016) == int(150e9 // 40_016)
    assert alpha_tokens(1000, 10, window_s=1.0) == 100


def test_beta_is_five_seconds_of_prefill() -> None:
    assert beta_tokens(9_000.0) == 45_000
    assert beta_tokens(100.0, window_s=2.0) == 200


@pytest.mark.parametrize("bad", [(0, 10), (10, 0), (-1, 10)])
def test_alpha_rejects_non_positive(bad: tuple[float, int]) -> None:
    with pytest.raises(ConfigError):
        alpha_tokens(*bad)


def test_system_ladder_mapping() -> None:
    got = {n: scheduler_config_for_system(system_spec(n)) for n in SYSTEM_NAMES}
    assert {n: (c.placement, c.read_policy) for n, c in got.items()} == {
        "basic": ("round-robin", "pe-only"),
        "layerwise": ("round-robin", "pe-only"),
        "dualpath-rr": ("round-robin", "round-robin"),
        "dualpath": ("dualpath", "shorter-queue"),
        "oracle": ("dualpath", "shorter-queue"),
    }
    # dualpath-rr's read side is round robin too (DESIGN.md 6, corrected); forcing a side wins.
    assert scheduler_config_for_system(system_spec("dualpath-rr"), read_path="de").read_policy \
        == "de-only"
    split = scheduler_config_for_system(system_spec("dualpath"), split_reads=True)
    assert split.read_policy == "split" and split.split_reads
    assert not got["dualpath"].split_reads
    # split_reads needs the dual path; forced modes override the system.
    assert scheduler_config_for_system(system_spec("basic"), split_reads=True).read_policy \
        == "pe-only"
    assert scheduler_config_for_system(system_spec("basic"), read_path="de").read_policy \
        == "de-only"
    assert scheduler_config_for_system(system_spec("dualpath"), read_path="pe").read_policy \
        == "pe-only"
    with pytest.raises(ConfigError, match="auto, pe, de"):
        scheduler_config_for_system(system_spec("dualpath"), read_path="both")


def test_config_passes_alpha_beta() -> None:
    cfg = scheduler_config_for_system(system_spec("dualpath"), alpha_tokens=5, beta_tokens=7,
                                      quota_s=0.2)
    assert (cfg.alpha_tokens, cfg.beta_tokens, cfg.quota_s, cfg.z_margin) == (5, 7, 0.2, 1.05)


@pytest.mark.parametrize("kw", [{"placement": "random"}, {"read_policy": "x"},
                                {"z_margin": 0.9}, {"quota_s": 0.0}, {"alpha_tokens": -1},
                                {"split_block_tokens": 0}])
def test_bad_config(kw: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        SchedulerConfig(**kw)  # type: ignore[arg-type]


def test_registry_names() -> None:
    assert POLICIES["placement"] == ("round-robin", "dualpath")
    assert POLICIES["read"] == ("pe-only", "de-only", "round-robin", "shorter-queue", "split")
    assert GlobalScheduler(SchedulerConfig("round-robin")).policy_name == "round-robin"
    assert GlobalScheduler().policy_name == "dualpath"


def test_view_validation() -> None:
    ok = NodeState(0, "prefill")
    with pytest.raises(SchedulingError, match="unknown node"):
        ClusterView.build([EngineState(0, 5, "prefill")], [ok])
    with pytest.raises(SchedulingError, match="all prefill or all decode"):
        ClusterView.build([EngineState(0, 0, "decode")], [ok])
    with pytest.raises(SchedulingError, match="duplicate engine"):
        ClusterView.build([EngineState(0, 0, "prefill")] * 2, [ok])
    with pytest.raises(SchedulingError, match="duplicate node"):
        ClusterView.build([], [ok, ok])
    with pytest.raises(SchedulingError, match="negative"):
        ClusterView.build([EngineState(0, 0, "prefill", tok=-1)], [ok])
    with pytest.raises(SchedulingError, match="unknown role"):
        ClusterView.build([], [NodeState(1, "mixed")])  # type: ignore[arg-type]


def test_request_validation() -> None:
    with pytest.raises(SchedulingError):
        RequestInfo(1, 0)
    with pytest.raises(SchedulingError):
        RequestInfo(1, 10, 11)
    with pytest.raises(SchedulingError):
        RequestInfo(1, 10, 0, 0.0, -1)
    r = RequestInfo(1, 10, 4, 0.0, 5)
    assert (r.miss_tokens, r.prefill_load_tokens, r.decode_kv_tokens) == (6, 10, 15)


def test_round_robin_alternates_engines_across_calls() -> None:
    view = make_view([[0], [0]], [[(0, 10**6)], [(0, 10**6)]])
    s = GlobalScheduler(SchedulerConfig("round-robin"))
    waiting = [RequestInfo(i, 100) for i in range(4)]
    result = s.schedule(waiting, view)
    assert [(p.pe_node, p.de_node) for p in result.placements] == [(0, 2), (1, 3)] * 2
