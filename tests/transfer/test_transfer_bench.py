"""`dualpath bench transfer` runs end to end on tiny sizes and writes the documented fields."""

from __future__ import annotations

import argparse

import pytest

from dualpath.bench import transfer_bench
from dualpath.core.errors import UserInputError


def _args(**overrides: object) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    transfer_bench.add_arguments(parser)
    args = parser.parse_args(["--bytes", "8MiB", "--message-bytes", "1MiB", "--repeats", "1",
                              "--shaped-rate", "100MB/s", "--shaped-bytes", "4MiB"])
    for key, value in overrides.items():
        setattr(args, key, value)
    return args


def test_bench_reports_the_documented_fields() -> None:
    result = transfer_bench.run(_args())
    for key in ("transport_bytes_s", "raw_socket_bytes_s", "efficiency_vs_raw_socket",
                "shaped_rate_configured_bytes_s", "shaped_rate_measured_bytes_s",
                "shaped_rate_accuracy", "machine"):
        assert key in result
    assert result["bytes_per_round"] == 8 * 2**20
    assert result["efficiency_vs_raw_socket"] == pytest.approx(
        result["transport_bytes_s_rounds"][0] / result["raw_socket_bytes_s_rounds"][0])
    assert result["shaped_rate_measured_bytes_s"] == pytest.approx(
        result["shaped_rate_accuracy"] * 100e6)
    assert result["shaped_nic_busy_s"] == pytest.approx(4 * 2**20 / 100e6)


def test_bench_rejects_bad_sizes() -> None:
    with pytest.raises(UserInputError):
        transfer_bench.run(_args(frames=3))
    with pytest.raises(UserInputError):
        transfer_bench.run(_args(shaped_rate="unlimited"))
