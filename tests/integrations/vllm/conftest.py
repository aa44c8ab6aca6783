"""A real 1P1D vLLM cluster (+ one plain vLLM) behind two DualPath routers, for `make test-vllm`.

Starts three `vllm.entrypoints.openai.api_server` processes from `.venv-vllm` (prefill and
decode with the DualPath connector, and a plain instance with vLLM's own prefix cache as the
reference) and two routers (`--read-path pe` and `--read-path de`). Skipped unless
`DUALPATH_VLLM_TESTS=1` (set by `make test-vllm`, which also builds the environment), so the
default suite stays offline and fast.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from vllm_helpers import VllmTestCluster

from dualpath.integrations.vllm.launch import (
    DEFAULT_MODEL_DIR,
    DEFAULT_VLLM_PYTHON,
    LaunchConfig,
    RouterProcess,
    VllmCluster,
)

ENABLED = os.environ.get("DUALPATH_VLLM_TESTS") == "1"
DEVICE = os.environ.get("DUALPATH_VLLM_DEVICE", "cpu")
DTYPE = os.environ.get("DUALPATH_VLLM_DTYPE", "float32")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = None
    if not ENABLED:
        reason = "vLLM integration tests run with `make test-vllm` (DUALPATH_VLLM_TESTS=1)"
    elif not DEFAULT_VLLM_PYTHON.exists() or not (DEFAULT_MODEL_DIR / "config.json").exists():
        reason = "no vLLM environment / converted model: run `make vllm-env`"
    if reason is None:
        return
    for item in items:
        if item.get_closest_marker("vllm") is not None:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def vllm_cluster() -> Iterator[VllmTestCluster]:
    work = Path(tempfile.mkdtemp(prefix="dualpath-vllm-test-"))
    run_dir = f"/dev/shm/dualpath-vllm-test-{os.getpid()}"
    cfg = LaunchConfig(store_path=str(work / "store"), run_dir=run_dir, max_model_len=4096,
                       kv_cache_gib=1, device=DEVICE,
                       dtype=DTYPE)
    cluster = VllmCluster.build(cfg, prefill=1, decode=1, plain=1)
    routers: dict[str, RouterProcess] = {}
    cluster.start()
    try:
        from dualpath.integrations.vllm.identity import model_config

        bpt = model_config(cfg.model_dir, cfg.dtype).kv_bytes_per_token
        spec_path = work / "cluster.json"
        spec_path.write_text(cluster.cluster_spec(bpt).to_json())
        for side in ("pe", "de"):
            routers[side] = RouterProcess(spec_path, args=("--read-path", side),
                                          log_path=work / f"router-{side}.log")
        for r in routers.values():
            r.wait_ready()
        yield VllmTestCluster(cluster, cfg, routers, work)
    finally:
        for r in routers.values():
            r.stop()
        cluster.stop()
        shutil.rmtree(run_dir, ignore_errors=True)
        if os.environ.get("DUALPATH_KEEP_TEST_DIR") != "1":
            shutil.rmtree(work, ignore_errors=True)
