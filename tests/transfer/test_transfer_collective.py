"""The synthetic all-to-all: the documented formula, and its bytes land in the high class."""

from __future__ import annotations

from pathlib import Path

import pytest
from transfer_helpers import MB

from dualpath.core.errors import ConfigError
from dualpath.transfer.collective import AllToAllShape, CollectiveLoad
from dualpath.transfer.nic import EmulatedNic, NicSpec


def test_formula() -> None:
    ds_v3 = AllToAllShape(hidden_size=7168, experts_per_token=8, ep_size=64)
    assert ds_v3.layer_bytes(4096) == int(4096 * 8 * 7168 * 3 * 63 / 64)
    assert AllToAllShape(hidden_size=16, experts_per_token=2, ep_size=1).layer_bytes(100) == 0
    bf16 = AllToAllShape(hidden_size=10, experts_per_token=1, ep_size=2,
                         dispatch_bytes_per_elem=2.0)
    assert bf16.layer_bytes(8) == 8 * 10 * 4 // 2
    with pytest.raises(ConfigError):
        AllToAllShape(hidden_size=0, experts_per_token=1, ep_size=1)


def test_run_layer_moves_the_bytes_both_ways_in_the_high_class(tmp_path: Path) -> None:
    nic = EmulatedNic(NicSpec("cnic", str(tmp_path / "c.nic"), 200 * MB))
    shape = AllToAllShape(hidden_size=256, experts_per_token=4, ep_size=8)
    load = CollectiveLoad(nic, shape, scale=2.0)
    slot = load.run_layer(512)
    expected = int(shape.layer_bytes(512) * 2.0)
    lanes = nic.stats().lanes
    assert lanes["tx.model"].bytes == expected and lanes["rx.model"].bytes == expected
    assert lanes["tx.kv"].bytes == 0
    # Full duplex: RX overlapped TX, so the layer took one transmission time, not two.
    assert slot.end_s - slot.start_s == pytest.approx(expected / (200 * MB), rel=0.2)
