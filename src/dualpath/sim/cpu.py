"""Engines that share one host's CPU cores (profiled engines, `HardwareSpec.host_cores`).

Our runtime on one machine runs every engine as a process with one torch thread on the same
few cores, next to the front end (the scheduler process and the client). Processor sharing:
when the engines computing plus the front end's load exceed the cores, each engine computes
at cores / demand of the speed it was profiled at. An engine counts as computing during a
prefill forward's compute (not while it waits for its prefix KV) and while a decode
engine's batch is not empty; one-off CPU work (`job`) counts as one more engine computing
while it lasts, its time fixed at its start as a prefill's: a decode engine moving a turn's
KV into its paged cache and persisting its blocks (`HardwareSpec.de_kv_cpu_s_per_byte`,
`de_persist_cpu_s_per_byte`), an engine reading a prefix from the store and sending KV over
the CNIC (`engine_read_cpu_s_per_byte`, `engine_send_cpu_s_per_byte`: a read from its start,
a prefill engine's sends from its forward's start, a decode engine sends what it read), and
the front end's work per turn (`frontend_cpu_s_per_turn`, from a turn's end).

The front end's per-token work (`frontend_cpu_s_per_token` = f) is a load of f x the token
rate: a decode group of batch b and profiled step p makes b / (p x s) tokens a second at
slowdown s, so with Q = Σ b / p the slowdown solves s = (n + f Q / s) / cores for n engines
computing: s = (n + sqrt(n² + 4 cores f Q)) / (2 cores) when n + f Q > cores, else 1. (The
front end is one process; its share is not capped at one core: at the loads measured it
stays under half of one.)

A change in the slowdown retimes every running decode group from that moment
(`DecodeStage.retime_all`); a prefill forward's time is fixed at its start. Not modelled:
a prefill engine's CPU for taking in the prefix KV a decode engine sends it (DE read path:
the profile's oracle runs read on the prefill side only, so there is no measurement).

With `host_cores` 0 (every GPU preset) there is no `HostCPU` and nothing is counted.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dualpath.sim.simulator import Simulator
    from dualpath.sim.state import DecodeGroup


class HostCPU:
    __slots__ = ("computing", "cores", "fe_token_s", "sim", "slowdown", "token_q")

    def __init__(self, sim: Simulator, cores: float, frontend_s_per_token: float = 0.0) -> None:
        if not cores > 0:
            raise ValueError(f"host cores must be > 0, got {cores}")
        if frontend_s_per_token < 0:
            raise ValueError(f"front-end CPU per token must be >= 0, got {frontend_s_per_token}")
        self.sim = sim
        self.cores = float(cores)
        self.fe_token_s = float(frontend_s_per_token)
        self.computing = 0
        self.token_q = 0.0  # Σ over running decode groups of batch / profiled step
        # How much longer work takes than profiled now (>= 1).
        self.slowdown = 1.0

    def _solve(self) -> float:
        n, c = self.computing, self.cores
        fq = self.fe_token_s * self.token_q
        if n + fq <= c:
            return 1.0
        return (n + math.sqrt(n * n + 4.0 * c * fq)) / (2.0 * c)

    def change(self, now: float, delta: int, skip: DecodeGroup | None = None,
               token_q: float = 0.0) -> list[Any]:
        """`delta` engines start (> 0) or stop (< 0) computing at `now`, and the decode
        groups' Σ batch / step moved by `token_q`: retime the running decode groups except
        `skip` (whose caller retimes it) if the slowdown moved."""
        before = self.slowdown
        self.computing += delta
        if self.computing < 0:
            raise AssertionError("more engines stopped computing than started")
        if token_q:
            self.token_q += token_q
            if self.token_q < 1e-9:  # rounding: nothing decodes
                self.token_q = 0.0
        self.slowdown = self._solve()
        if self.slowdown == before:
            return []
        return self.sim.decode.retime_all(now, skip)

    def job(self, now: float, work_s: float) -> list[Any]:
        """One-off CPU work of `work_s` profiled seconds starting now: one more engine
        computing until it ends (its time fixed at its start)."""
        if work_s <= 0:
            return []
        events = self.change(now, 1)
        events.append((now + work_s * self.slowdown, self._job_done, None))
        return events

    def _job_done(self, now: float, _: Any) -> list[Any]:
        return self.change(now, -1)
