"""Agentic trajectories: the unit of work of the offline and online benchmarks.

A trajectory is a list of turns (append tokens, generated tokens). Turn i's prompt is every
earlier append and generation plus its own append; its generation is forced to the recorded
length. Lengths are all a trajectory stores; token contents are drawn when a real server is
the target (`dualpath.workload.tokens`). `prefix_hash_ids` names the content of the first
turn's append block by block (`hash_block_tokens` tokens per id, as in Mooncake traces), so
imported requests that share leading hash ids share leading tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from dualpath.core.errors import UserInputError


@dataclass(frozen=True)
class Turn:
    """One turn: tokens appended to the context (tool output, feedback) and tokens generated."""

    append_tokens: int
    gen_tokens: int

    def __post_init__(self) -> None:
        if self.append_tokens < 1 or self.gen_tokens < 1:
            raise UserInputError(
                f"a turn needs append_tokens >= 1 and gen_tokens >= 1, got "
                f"({self.append_tokens}, {self.gen_tokens})"
            )


@dataclass(frozen=True)
class Trajectory:
    """An agent's recorded trajectory. `arrival_s` is its arrival time in the source trace."""

    trajectory_id: str
    turns: tuple[Turn, ...]
    arrival_s: float | None = None
    prefix_hash_ids: tuple[int, ...] = ()
    hash_block_tokens: int = 512

    def __post_init__(self) -> None:
        if not self.turns:
            raise UserInputError(f"trajectory {self.trajectory_id!r} has no turns")
        if self.hash_block_tokens < 1:
            raise UserInputError(f"hash_block_tokens must be >= 1, got {self.hash_block_tokens}")

    @property
    def num_turns(self) -> int:
        return len(self.turns)

    @property
    def total_tokens(self) -> int:
        """Final token count: every append and generation."""
        return sum(t.append_tokens + t.gen_tokens for t in self.turns)

    def prompt_tokens(self) -> list[int]:
        """Prompt length of every turn (earlier appends and generations + own append)."""
        out: list[int] = []
        done = 0
        for t in self.turns:
            out.append(done + t.append_tokens)
            done += t.append_tokens + t.gen_tokens
        return out

    def scaled(self, factor: float) -> Trajectory:
        """Every length multiplied by factor (rounded, at least 1 token)."""
        if factor <= 0:
            raise UserInputError(f"--scale must be > 0, got {factor}")
        if factor == 1.0:
            return self
        turns = tuple(
            Turn(max(1, round(t.append_tokens * factor)), max(1, round(t.gen_tokens * factor)))
            for t in self.turns
        )
        return replace(self, turns=turns)

    def truncated(self, max_context: int) -> Trajectory | None:
        """The leading turns whose prompt + generation fit in max_context; None if none fits."""
        kept: list[Turn] = []
        done = 0
        for t in self.turns:
            if done + t.append_tokens + t.gen_tokens > max_context:
                break
            kept.append(t)
            done += t.append_tokens + t.gen_tokens
        if not kept:
            return None
        return replace(self, turns=tuple(kept))
