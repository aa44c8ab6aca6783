"""prefill_times: rows, capping and the loaded-token arithmetic (no timing assertions)."""

from __future__ import annotations

import pytest

from dualpath.bench.prefill_times import prefill_times
from dualpath.core.errors import UserInputError


def test_rows_and_loaded_tokens() -> None:
    rows = prefill_times(["tiny"], prompt_lengths=(100, 300, 10**6),
                         loaded_fractions=(0.0, 0.5, 0.99), block_size=16,
                         max_prompt_tokens=300)
    assert [(r["prompt_tokens"], r["loaded_fraction"]) for r in rows] == [
        (100, 0.0), (100, 0.5), (100, 0.99), (300, 0.0), (300, 0.5), (300, 0.99)]
    loaded = [r["loaded_tokens"] for r in rows]
    assert loaded == [0, 48, 96, 0, 144, 288]  # whole blocks, one token always computed
    for r in rows:
        assert r["computed_tokens"] == r["prompt_tokens"] - r["loaded_tokens"] >= 1
        assert r["prefill_s"] > 0
        assert r["loaded_kv_bytes"] == r["loaded_tokens"] * 3 * 2 * 2 * 16 * 4
        assert r["weights_id"] == "random-seed-0"


def test_bad_fraction() -> None:
    with pytest.raises(UserInputError):
        prefill_times(["tiny"], prompt_lengths=(32,), loaded_fractions=(1.0,))
