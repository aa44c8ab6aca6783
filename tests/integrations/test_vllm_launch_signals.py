"""SIGTERM to a process that runs a vLLM cluster stops the instances (no vLLM needed).

The instances run in their own sessions, so a signal to the launcher does not reach them; a
`dualpath bench vllm-storage-bound` killed with SIGTERM used to leave them running. Here a
fake "vLLM" (a shell script that records its pid and sleeps) stands in for the instances.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

from dualpath.integrations.vllm.launch import environment, exit_on_sigterm

LAUNCHER = textwrap.dedent("""
    import sys
    from dualpath.integrations.vllm.launch import LaunchConfig, VllmCluster

    work = sys.argv[1]
    cfg = LaunchConfig(model_dir=work + "/model", vllm_python=work + "/fake-vllm",
                       store_path=work + "/store", run_dir=work + "/run",
                       startup_timeout_s=600)
    try:
        with VllmCluster.build(cfg, prefill=1, decode=1):
            pass  # never healthy: SIGTERM arrives while start() waits
    finally:
        open(work + "/cleaned", "w").close()
""")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_for(pred: Callable[[], bool], timeout_s: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.1)
    return False


def test_sigterm_stops_the_instances(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    pids = tmp_path / "pids"
    fake = tmp_path / "fake-vllm"
    fake.write_text(f"#!/bin/sh\necho $$ >> {pids}\nexec sleep 600\n")
    fake.chmod(0o755)
    proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(tmp_path)],
                            stderr=subprocess.PIPE, text=True)
    try:
        assert _wait_for(lambda: pids.exists() and len(pids.read_text().split()) == 2)
        instances = [int(p) for p in pids.read_text().split()]
        assert all(_alive(p) for p in instances)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 143, err
        assert (tmp_path / "cleaned").exists()
        assert _wait_for(lambda: not any(_alive(p) for p in instances), 30.0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in (int(p) for p in pids.read_text().split()) if pids.exists() else ():
            if _alive(pid):  # only on failure: the fakes this test started
                os.kill(pid, signal.SIGKILL)


def test_exit_on_sigterm_leaves_an_existing_handler_alone() -> None:
    def mine(signum: int, frame: object) -> None:
        pass

    previous = signal.signal(signal.SIGTERM, mine)
    try:
        undo = exit_on_sigterm()
        assert signal.getsignal(signal.SIGTERM) is mine
        undo()
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_cpu_instances_get_a_generous_forward_timeout(tmp_path: Path) -> None:
    from dualpath.integrations.vllm.launch import LaunchConfig

    (tmp_path / "config.json").write_text("{}")
    cfg = LaunchConfig(model_dir=str(tmp_path), vllm_python=sys.executable)
    env = environment(cfg)
    if "VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS" not in os.environ:
        assert env["VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS"] == "3600"
    assert env["HF_HUB_OFFLINE"] == "1"
