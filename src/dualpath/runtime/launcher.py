"""Starting, watching and stopping engine processes.

Each engine is a separate OS process (`python -m dualpath.engine.main`), given the whole
cluster config as JSON plus its own id and the scheduler's control address, so the same
command line starts an engine on another host. Engines die with their parent: they poll
their parent pid (and use PR_SET_PDEATHSIG on Linux), so shutting down — or a crash of the
scheduler process — leaves no orphan.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

from dualpath.core.config import ClusterConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineSpec:
    """Static identity of one engine: its id, node, role and rank within the node."""

    engine_id: int
    node_id: int
    role: str  # "prefill" | "decode"
    local_rank: int


def engine_specs(config: ClusterConfig) -> list[EngineSpec]:
    """Prefill nodes first, then decode nodes; engines numbered node by node."""
    specs: list[EngineSpec] = []
    for node_id in range(config.num_nodes):
        role = "prefill" if node_id < config.prefill_nodes else "decode"
        for rank in range(config.engines_per_node):
            specs.append(EngineSpec(len(specs), node_id, role, rank))
    return specs


class EngineProcesses:
    """The engine child processes of one cluster. `start` them, `poll_dead`, `stop`."""

    def __init__(self, config: ClusterConfig, control_address: str, run_dir: str,
                 secret_path: str) -> None:
        self._config = config
        self._control_address = control_address
        self._run_dir = run_dir
        self._secret_path = secret_path
        self._procs: dict[int, subprocess.Popen[bytes]] = {}
        self._specs: dict[int, EngineSpec] = {}
        self._reported_dead: set[int] = set()

    def start(self, spec: EngineSpec) -> None:
        """Start `spec`'s engine (again, after it died: the same id rejoins)."""
        self._specs[spec.engine_id] = spec
        self._reported_dead.discard(spec.engine_id)
        log_path = os.path.join(self._run_dir, f"engine-{spec.engine_id}.log")
        cmd = [
            sys.executable, "-m", "dualpath.engine.main",
            "--engine-id", str(spec.engine_id),
            "--node-id", str(spec.node_id),
            "--role", spec.role,
            "--control", self._control_address,
            "--run-dir", self._run_dir,
            "--parent-pid", str(os.getpid()),
            "--config-json", self._config.to_json(),
            "--cluster-secret", self._secret_path,
        ]
        env = dict(os.environ)
        # Engines stand for separate GPUs: each runs `threads` intra-op threads (1 by default),
        # so a small machine is not oversubscribed by every engine spawning a thread per core.
        env["OMP_NUM_THREADS"] = str(self._config.threads)
        with open(log_path, "ab") as log_file:
            proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True)
        self._procs[spec.engine_id] = proc
        logger.info("started engine %d (%s, node %d) pid %d, log %s",
                    spec.engine_id, spec.role, spec.node_id, proc.pid, log_path)

    def pid(self, engine_id: int) -> int:
        return self._procs[engine_id].pid

    def spec(self, engine_id: int) -> EngineSpec:
        return self._specs[engine_id]

    def running(self, engine_id: int) -> bool:
        proc = self._procs.get(engine_id)
        return proc is not None and proc.poll() is None

    def poll_dead(self) -> list[int]:
        """Engines that exited since the last call (each reported once)."""
        dead = []
        for engine_id, proc in self._procs.items():
            if engine_id not in self._reported_dead and proc.poll() is not None:
                self._reported_dead.add(engine_id)
                dead.append(engine_id)
                logger.error("engine %d (pid %d) exited with code %s",
                             engine_id, proc.pid, proc.returncode)
        return dead

    def kill(self, engine_id: int) -> None:
        """Kill one engine hard (used by failure tests and the supervisor)."""
        proc = self._procs[engine_id]
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM every engine's process group, then SIGKILL what is left after timeout_s."""
        for proc in self._procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for proc in self._procs.values():
            remaining = max(0.0, deadline - time.monotonic())
            try:
                proc.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                logger.warning("engine pid %d did not stop in time; killing", proc.pid)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def log_tail(path: str, lines: int = 30) -> str:
    """The last `lines` lines of an engine's log (for error messages)."""
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return "(no log)"
