"""What the benchmark driver runs turns against: the one-method `Target` interface.

The driver owns the agents (arrivals, turn order, prompt building); a target only runs one
turn and says when its tokens came. Times are on the running event loop's clock
(`asyncio.get_running_loop().time()`), which lets tests drive fakes in virtual time. The
HTTP server target lives in `dualpath.bench.http_target`; the simulator does not run turn by
turn (it is called through `dualpath.bench.sim_hook`).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass


@dataclass(frozen=True)
class TurnRequest:
    """One turn to run. prompt_token_ids is None when the target does not need contents."""

    agent_id: int
    turn_index: int
    prompt_tokens: int
    gen_tokens: int
    prompt_token_ids: tuple[int, ...] | None = None


@dataclass(frozen=True)
class TurnResult:
    """How a turn went, in event-loop seconds. generated_token_ids: None if not asked for."""

    first_token_s: float
    second_token_s: float | None
    end_s: float
    generated_tokens: int
    cached_tokens: int = 0
    generated_token_ids: tuple[int, ...] | None = None


class Target(abc.ABC):
    """Runs turns. Instances are used by one driver run at a time, from one event loop."""

    #: True when run_turn needs `TurnRequest.prompt_token_ids` (a real server does).
    needs_token_ids: bool = False

    @abc.abstractmethod
    async def run_turn(self, request: TurnRequest) -> TurnResult:
        """Called by the driver once per turn, concurrently for different agents. Must
        generate exactly `request.gen_tokens` tokens; when `needs_token_ids` is True it must
        return the generated ids (the driver appends them to the agent's next prompt)."""

    async def close(self) -> None:
        """Called by the driver when the run ends; release connections."""
        return None

    def describe(self) -> dict[str, object]:
        """A few fields for the report (e.g. the URL)."""
        return {"target": type(self).__name__}
