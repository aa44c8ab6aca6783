"""The statistics of a set of trajectories, as DESIGN.md section 1's table defines them.

- turns_mean: mean over trajectories of the number of turns;
- append_tokens_mean / gen_tokens_mean: mean over trajectories of each trajectory's mean
  per-turn append / generated length;
- total_tokens_mean: mean over trajectories of the final token count;
- context_tokens_mean: mean prompt length over all turns of all trajectories.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dualpath.core.errors import UserInputError
from dualpath.workload.trajectory import Trajectory


def trace_stats(trajectories: Sequence[Trajectory]) -> dict[str, Any]:
    """The table's means plus spread (max / p-values would belong to a plot, not here)."""
    if not trajectories:
        raise UserInputError("the trace has no trajectories")
    n = len(trajectories)
    turns = [t.num_turns for t in trajectories]
    append_means = [sum(x.append_tokens for x in t.turns) / t.num_turns for t in trajectories]
    gen_means = [sum(x.gen_tokens for x in t.turns) / t.num_turns for t in trajectories]
    totals = [t.total_tokens for t in trajectories]
    prompt_sum = 0
    for t in trajectories:
        prompt_sum += sum(t.prompt_tokens())
    return {
        "num_trajectories": n,
        "num_turns_total": sum(turns),
        "turns_mean": sum(turns) / n,
        "append_tokens_mean": sum(append_means) / n,
        "gen_tokens_mean": sum(gen_means) / n,
        "total_tokens_mean": sum(totals) / n,
        "context_tokens_mean": prompt_sum / sum(turns),
        "turns_max": max(turns),
        "total_tokens_max": max(totals),
    }
