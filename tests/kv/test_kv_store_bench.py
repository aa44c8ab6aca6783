"""`dualpath bench store` on a tiny configuration: every documented JSON field is there."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from dualpath.bench import store_bench
from dualpath.cli.main import main


def _args(tmp_path: Path, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    store_bench.add_arguments(parser)
    return parser.parse_args(["--dir", str(tmp_path / "bench"), "--total-mib", "1",
                              "--block-tokens", "8,16", "--repeats", "1", "--no-prefill", *extra])


def test_store_bench_reports_efficiencies(tmp_path: Path) -> None:
    result = store_bench.run(_args(tmp_path, "--no-fsync"))
    for key in ("read_efficiency", "write_efficiency", "get_layer_bytes_s", "get_layer_efficiency"):
        assert result[key] > 0
    assert set(result["sizes"]) == {"8", "16"}
    for size in result["sizes"].values():
        for key in ("store_read_bytes_s", "raw_read_bytes_s", "store_write_bytes_s",
                    "raw_write_bytes_s", "read_efficiency", "write_efficiency"):
            assert size[key] > 0
        assert size["total_bytes"] == size["num_blocks"] * size["block_bytes"] > 0
    assert result["read_efficiency"] == result["sizes"]["8"]["read_efficiency"]
    assert result["prefill"] is None and "no-prefill" in result["prefill_skipped"]
    assert "fadvise" in result["cache_method"]
    assert not list((tmp_path / "bench").rglob("*.kvb"))  # cleaned up


def test_store_bench_cli_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "store.json"
    rc = main(["bench", "store", "--dir", str(tmp_path / "b"), "--total-mib", "1",
               "--block-tokens", "8", "--repeats", "1", "--no-prefill", "--json", str(out)])
    assert rc == 0
    assert json.loads(out.read_text())["sizes"]["8"]["num_blocks"] >= 1


def test_bad_flags_are_user_errors(tmp_path: Path) -> None:
    from dualpath.core.errors import UserInputError

    with pytest.raises(UserInputError, match="block-tokens"):
        store_bench.run(_args(tmp_path, "--block-tokens", "x"))


def test_store_bench_against_redis_reports_efficiencies(tmp_path: Path) -> None:
    from redis_helpers import require_redis_server

    require_redis_server()
    out = tmp_path / "net.json"
    rc = main(["bench", "store", "--start-redis", "--total-mib", "1", "--block-tokens", "8,16",
               "--repeats", "1", "--io-threads", "2", "--pipeline-blocks", "2", "--json", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    assert result["backend"] == "redis" and result["started_server"] is True
    assert result["server"]["aof_enabled"] == 1 and result["server"]["redis_version"]
    for key in ("read_efficiency", "write_efficiency", "get_layer_efficiency", "prefix_check_s"):
        assert result[key] > 0
    for size in result["sizes"].values():
        for key in ("store_read_bytes_s", "raw_read_bytes_s", "store_write_bytes_s",
                    "raw_write_bytes_s", "store_get_layer_bytes_s", "raw_get_layer_bytes_s",
                    "store_prefix_check_s", "raw_prefix_check_s"):
            assert size[key] > 0
    assert result["read_efficiency"] == result["sizes"]["8"]["read_efficiency"]
