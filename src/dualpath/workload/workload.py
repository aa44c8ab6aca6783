"""A workload: which agents run which trajectory, arriving when.

The same `Workload` object goes to the HTTP driver and to the simulator
(`dualpath.sim.api.run_workload`), so both replay exactly the same agents.

- offline (RL rollout): every agent arrives at 0 and runs its turns back to back;
- online: agents arrive as a Poisson process at `aps` agents/s (exponential gaps from a
  seeded generator), or at their recorded trace arrival times.

When more agents are asked for than the trace holds, trajectories are reused cyclically
(agent i runs trajectory i mod len(trace)); every agent has its own id and token contents.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from dualpath.core.errors import UserInputError
from dualpath.workload.trajectory import Trajectory


@dataclass(frozen=True)
class AgentSpec:
    agent_id: int
    trajectory: Trajectory
    arrival_s: float


@dataclass(frozen=True)
class Workload:
    """Agents sorted by arrival. `info` describes how it was built (for reports)."""

    agents: tuple[AgentSpec, ...]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_turns(self) -> int:
        return sum(a.trajectory.num_turns for a in self.agents)


def _pick(trajectories: Sequence[Trajectory], num_agents: int | None) -> list[Trajectory]:
    if not trajectories:
        raise UserInputError("the workload has no trajectories")
    n = len(trajectories) if num_agents is None else num_agents
    if n < 1:
        raise UserInputError(f"--agents must be >= 1, got {n}")
    return [trajectories[i % len(trajectories)] for i in range(n)]


def offline_workload(
    trajectories: Sequence[Trajectory], num_agents: int | None = None
) -> Workload:
    picked = _pick(trajectories, num_agents)
    agents = tuple(AgentSpec(i, t, 0.0) for i, t in enumerate(picked))
    return Workload(agents, {"mode": "offline", "num_agents": len(agents)})


def poisson_arrivals(aps: float, rng: random.Random, *, count: int | None = None,
                     duration_s: float | None = None) -> list[float]:
    """Arrival times of a Poisson process at rate aps: `count` of them, or all before
    `duration_s` (the first arrival is one exponential gap after 0)."""
    if not aps > 0:
        raise UserInputError(f"--aps must be > 0, got {aps}")
    if count is None and duration_s is None:
        raise UserInputError("a Poisson workload needs a number of agents or a duration")
    out: list[float] = []
    t = 0.0
    while True:
        t += rng.expovariate(aps)
        if duration_s is not None and t > duration_s:
            break
        out.append(t)
        if count is not None and len(out) >= count:
            break
    return out


def online_workload(
    trajectories: Sequence[Trajectory],
    *,
    aps: float | None,
    seed: int,
    num_agents: int | None = None,
    duration_s: float | None = None,
    use_trace_arrivals: bool = False,
) -> Workload:
    """Poisson arrivals at `aps` (or the trace's `arrival_s`), `num_agents` and/or
    arrivals within `duration_s`."""
    if use_trace_arrivals:
        picked = _pick(trajectories, num_agents)
        if any(t.arrival_s is None for t in picked):
            raise UserInputError("--arrivals trace needs a trace whose trajectories have arrival_s")
        base = min(t.arrival_s or 0.0 for t in picked)
        times = [(t.arrival_s or 0.0) - base for t in picked]
        pairs = sorted(zip(times, picked, strict=True), key=lambda p: p[0])
        if duration_s is not None:
            pairs = [p for p in pairs if p[0] <= duration_s]
        agents = tuple(AgentSpec(i, t, at) for i, (at, t) in enumerate(pairs))
        return Workload(agents, {"mode": "online", "arrivals": "trace", "num_agents": len(agents)})
    if aps is None:
        raise UserInputError("online mode needs --aps (agents per second)")
    count = num_agents if duration_s is None else None
    if count is None and duration_s is None:
        count = len(trajectories)
    times = poisson_arrivals(aps, random.Random(seed), count=count, duration_s=duration_s)
    if num_agents is not None:
        times = times[:num_agents]
    picked = _pick(trajectories, len(times)) if times else []
    agents = tuple(AgentSpec(i, t, at) for i, (at, t) in enumerate(zip(times, picked, strict=True)))
    return Workload(agents, {"mode": "online", "arrivals": "poisson", "aps": aps,
                             "arrival_seed": seed, "num_agents": len(agents)})
