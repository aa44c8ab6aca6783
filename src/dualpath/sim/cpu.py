"""Engines that share one host's CPU cores (profiled engines, `HardwareSpec.host_cores`).

Our runtime on one machine runs every engine as a process with one torch thread on the same
few cores; when more engines compute than there are cores, each computes at cores / computing
of the speed it was profiled at (the profile's points keep at most `host_cores` engines
computing at once: one prefill engine alone, or the two decode engines). An engine counts as
computing during a prefill forward's compute (not while it waits for its prefix KV) and while
a decode engine's batch is not empty. A change in the count retimes every running decode
group from that moment (`DecodeStage.retime_all`); a prefill forward's time is fixed at its
start. A decode engine's work of moving a turn's KV (profiled per byte:
`HardwareSpec.de_kv_cpu_s_per_byte`, `de_persist_cpu_s_per_byte`) counts as one more engine
computing while it lasts (`DecodeStage._kv_work`). Not modelled: the prefill engine's CPU for
sending KV, the engines' store reads, and the front end's CPU.

With `host_cores` 0 (every GPU preset) there is no `HostCPU` and nothing is counted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dualpath.sim.simulator import Simulator
    from dualpath.sim.state import DecodeGroup


class HostCPU:
    __slots__ = ("computing", "cores", "sim")

    def __init__(self, sim: Simulator, cores: float) -> None:
        if not cores > 0:
            raise ValueError(f"host cores must be > 0, got {cores}")
        self.sim = sim
        self.cores = float(cores)
        self.computing = 0

    @property
    def slowdown(self) -> float:
        """How much longer work takes than profiled, for the engines computing now (>= 1)."""
        n = self.computing
        return n / self.cores if n > self.cores else 1.0

    def change(self, now: float, delta: int, skip: DecodeGroup | None = None) -> list[Any]:
        """`delta` engines start (> 0) or stop (< 0) computing at `now`: retime the running
        decode groups except `skip` (whose caller retimes it) if the slowdown moved."""
        before = self.slowdown
        self.computing += delta
        if self.computing < 0:
            raise AssertionError("more engines stopped computing than started")
        if self.slowdown == before:
            return []
        return self.sim.decode.retime_all(now, skip)
