"""The CLI: every subcommand has --help; user errors are one line, exit 2."""

import subprocess
import sys

import pytest

from dualpath.cli.bench import BENCHMARKS
from dualpath.cli.main import build_parser


@pytest.mark.parametrize("cmd", ["serve", "simulate", "bench", "trace", "generate"])
def test_subcommand_help(cmd: str) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args([cmd, "--help"])
    assert exc.value.code == 0


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_bench_help(name: str) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["bench", name, "--help"])
    assert exc.value.code == 0


def test_module_entry_point() -> None:
    out = subprocess.run([sys.executable, "-m", "dualpath", "--version"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.startswith("dualpath ")
