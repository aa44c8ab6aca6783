"""`dualpath serve` flags reach the config and the server: admission bounds, HTTP limits, store cap."""

from __future__ import annotations

import argparse

import pytest

from dualpath.cli import serve
from dualpath.core.errors import UserInputError
from dualpath.server.http_limits import HttpLimits, http_limits_from_args


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    serve.register(sub)
    return parser.parse_args(["serve", *argv])


def test_admission_and_store_flags_reach_the_cluster_config() -> None:
    args = parse("--max-queue", "8", "--max-num-seqs", "8", "--store-max-bytes", "500MiB")
    cfg = serve.cluster_config(args, max_running_requests=args.max_running,
                               max_waiting_requests=args.max_queue)
    assert (cfg.max_running_requests, cfg.max_waiting_requests) == (8, 8)
    assert cfg.store_max_bytes == 500 * 2**20
    defaults = serve.cluster_config(parse())
    assert (defaults.max_running_requests, defaults.max_waiting_requests) == (256, 1024)
    assert defaults.store_max_bytes is None


def test_http_limit_flags_have_defaults_and_units() -> None:
    assert http_limits_from_args(parse()) == HttpLimits()
    limits = http_limits_from_args(parse("--header-timeout-s", "2", "--body-timeout-s", "3",
                                         "--keep-alive-timeout-s", "4", "--max-connections",
                                         "100", "--max-header-bytes", "16KiB",
                                         "--max-body-bytes", "2MB"))
    assert limits == HttpLimits(2, 3, 4, 100, 16 * 1024, 2_000_000)


@pytest.mark.parametrize("argv", [
    ("--header-timeout-s", "0"), ("--body-timeout-s", "nan"), ("--keep-alive-timeout-s", "inf"),
    ("--max-connections", "0"), ("--max-body-bytes", "lots"),
])
def test_bad_http_limits_are_user_errors(argv: tuple[str, str]) -> None:
    with pytest.raises(UserInputError):
        http_limits_from_args(parse(*argv))


def test_store_cap_in_a_config_file_accepts_units(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from dualpath.core.config import ClusterConfig

    path = tmp_path / "c.toml"
    path.write_text('store_max_bytes = "2GB"\nmax_running_requests = 4\n')
    cfg = ClusterConfig.load(path)
    assert cfg.store_max_bytes == 2_000_000_000 and cfg.max_running_requests == 4
