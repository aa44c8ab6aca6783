"""`dualpath vllm serve` and the router's entry point: help and clear errors without vLLM."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from dualpath.cli.main import build_parser


def test_vllm_serve_help() -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["vllm", "serve", "--help"])
    assert exc.value.code == 0


def test_vllm_serve_without_the_environment_says_what_to_do(tmp_path) -> None:
    env = dict(os.environ, DUALPATH_VLLM_PYTHON=str(tmp_path / "missing" / "python"))
    out = subprocess.run([sys.executable, "-m", "dualpath", "vllm", "serve", "--port", "0"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 2
    assert "make vllm-env" in out.stderr


def test_router_refuses_a_bad_cluster_spec(tmp_path) -> None:
    spec = tmp_path / "cluster.json"
    spec.write_text('{"instances": []}')
    out = subprocess.run([sys.executable, "-m", "dualpath.integrations.vllm.router",
                          "--cluster", str(spec)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "cluster spec" in out.stderr
