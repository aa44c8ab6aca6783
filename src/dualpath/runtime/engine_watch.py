"""Engine deaths: a local engine process that exits, or any engine (local or on a joined node)
that has been silent for longer than the heartbeat timeout. Local engines are restarted with
backoff (`RestartPolicy`) and rejoin under their id; a joined node's agent restarts its own.
"""

from __future__ import annotations

import logging
import os

from dualpath.runtime.cluster_metrics import ClusterMetrics
from dualpath.runtime.launcher import EngineProcesses, EngineSpec, log_tail
from dualpath.runtime.membership import Membership
from dualpath.runtime.restart_policy import RestartPolicy

logger = logging.getLogger(__name__)


class EngineWatch:
    def __init__(self, procs: EngineProcesses, membership: Membership, metrics: ClusterMetrics,
                 run_dir: str, policy: RestartPolicy | None = None) -> None:
        self._procs = procs
        self._membership = membership
        self._metrics = metrics
        self._run_dir = run_dir
        self.policy = policy if policy is not None else RestartPolicy()
        self._local: set[int] = set()
        self._restart_at: dict[int, float] = {}

    def start(self, spec: EngineSpec, now_s: float) -> None:
        self._local.add(spec.engine_id)
        self._procs.start(spec)
        self.policy.started(spec.engine_id, now_s)

    def dead(self, alive: list[int], now_s: float, heard_by_s: float | None = None) -> list[int]:
        """Engines that died since the last call (each once); restarts the local ones due.
        Silence is measured at `heard_by_s` (default `now_s`): a time by which every frame
        the engines sent had been read."""
        died = list(self._procs.poll_dead())
        for engine_id in self._membership.silent(alive, now_s if heard_by_s is None
                                                 else heard_by_s):
            if engine_id in died:
                continue
            logger.error("engine %d has been silent for more than %g s: treating it as dead",
                         engine_id, self._membership.config.engine_heartbeat_timeout_s)
            if engine_id in self._local and self._procs.running(engine_id):
                self._procs.kill(engine_id)  # a wedged local engine: restart it clean
                self._procs.poll_dead()
            died.append(engine_id)
        for engine_id in died:
            log = os.path.join(self._run_dir, f"engine-{engine_id}.log")
            logger.error("engine %d died; re-running its requests elsewhere. Log tail:\n%s",
                         engine_id, log_tail(log, 15) if engine_id in self._local else "(remote)")
            self._metrics.forget(engine_id)
            if engine_id in self._local:
                delay = self.policy.delay_after_death(engine_id, now_s)
                self._restart_at[engine_id] = now_s + delay
                logger.info("restarting engine %d in %.1f s", engine_id, delay)
        for engine_id, at in list(self._restart_at.items()):
            if now_s >= at:
                del self._restart_at[engine_id]
                self._membership.last_seen_s.pop(engine_id, None)
                self.start(self._procs.spec(engine_id), now_s)
        return [e for e in died if e in alive]
