"""Model cost presets and hardware files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dualpath.core.errors import ConfigError, UserInputError
from dualpath.sim.hardware import load_hardware
from dualpath.sim.model_cost import MODEL_PRESETS, model_cost
from dualpath.sim.ratio import PAPER_RATIOS, cache_compute_gb_per_pflop


@pytest.mark.parametrize("name", sorted(PAPER_RATIOS))
def test_cache_compute_ratio_within_15_percent_of_the_paper(name: str) -> None:
    lo, hi = PAPER_RATIOS[name]
    m = model_cost(name)
    assert cache_compute_gb_per_pflop(m, 16 * 1024) == pytest.approx(lo, rel=0.15)
    assert cache_compute_gb_per_pflop(m, 64 * 1024) == pytest.approx(hi, rel=0.15)


def test_kv_bytes_per_token_from_configs() -> None:
    # DeepSeek-V3.2: (512 latent + 64 rope + 128 indexer key) x 1 byte x 61 layers.
    assert model_cost("ds-660b").kv_bytes_per_token == (512 + 64 + 128) * 61
    # Qwen2.5-32B: 2 x 8 KV heads x 128 x 2 bytes x 64 layers.
    assert model_cost("qwen-32b").kv_bytes_per_token == 2 * 8 * 128 * 2 * 64


def test_parameter_counts_match_the_published_sizes() -> None:
    assert model_cost("ds-660b").total_params == pytest.approx(671e9, rel=0.02)
    assert model_cost("ds-660b").active_params == pytest.approx(37e9, rel=0.05)
    assert model_cost("qwen-32b").total_params == pytest.approx(32.8e9, rel=0.02)
    assert model_cost("ds-27b").total_params == pytest.approx(27e9, rel=0.05)


def test_sparse_attention_caps_attended_keys() -> None:
    m = model_cost("ds-660b")
    # Beyond top-k, only the indexer grows with the context.
    d = m.attention_flops(20_000, 1) - m.attention_flops(10_000, 1)
    assert d == pytest.approx(10_000 * m.indexer_flops_per_pair)
    assert m.attention_flops(100, 1) == pytest.approx(101 * (m.attn_flops_per_pair + m.indexer_flops_per_pair))


def test_every_preset_has_positive_costs() -> None:
    for m in MODEL_PRESETS.values():
        assert m.prefill_flops(1000, 100) > m.prefill_flops(0, 100) > 0
        assert m.decode_kv_read_bytes(1000) > 0


def test_unknown_model_is_a_user_error() -> None:
    with pytest.raises(UserInputError):
        model_cost("gpt-9")


def test_hardware_file_overrides_the_testbed(tmp_path: Path) -> None:
    f = tmp_path / "fat-snic.json"
    f.write_text(json.dumps({"snic_bytes_s": 100e9, "_snic_bytes_s": "800 Gbps"}))
    hw = load_hardware(str(f))
    assert hw.name == "fat-snic" and hw.snic_bytes_s == 100e9
    assert hw.cnic_bytes_s == load_hardware().cnic_bytes_s


def test_bad_hardware_files_are_config_errors(tmp_path: Path) -> None:
    f = tmp_path / "bad.json"
    f.write_text(json.dumps({"snic_bytes_s": -1}))
    with pytest.raises(ConfigError):
        load_hardware(str(f))
    f.write_text(json.dumps({"warp_drive": 1}))
    with pytest.raises(ConfigError):
        load_hardware(str(f))
    with pytest.raises(ConfigError):
        load_hardware("no-such-preset")


def test_every_preset_loads() -> None:
    from dualpath.sim.hardware import hardware_presets

    names = hardware_presets()
    assert "hopper-testbed" in names and len(names) >= 2
    for name in names:
        assert load_hardware(name).gpus_per_node > 0


def test_decode_step_is_the_roofline_of_the_model_costs() -> None:
    """`CostModel.decode_member_s` (unrolled for speed) equals the roofline written with
    `ModelCost.decode_flops` / `decode_kv_read_bytes`, for every preset."""
    import random

    from dualpath.sim.cost import CostModel

    hw = load_hardware()
    rng = random.Random(0)
    for m in MODEL_PRESETS.values():
        cost = CostModel(m, hw)
        for _ in range(500):
            n, ctx, w = rng.randint(1, 300), rng.uniform(0, 200_000), rng.uniform(1e9, 60e9)
            c = max(1, int(ctx))
            ref = max(n * m.decode_flops(c) / (cost.peak_flops * hw.decode_mfu),
                      (w + n * m.decode_kv_read_bytes(c)) / (hw.hbm_bytes_s * hw.decode_mbu))
            assert cost.decode_member_s(n, ctx, w) == pytest.approx(ref, rel=1e-12)
