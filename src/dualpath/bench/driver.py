"""The benchmark driver: replays a `Workload` against a `Target`, one asyncio task per agent.

Each agent sleeps until its arrival time, then runs its turns strictly one after another
(turn i+1 starts only after turn i's last token). When the target needs token contents, the
agent's prompt grows by the server's *actual* generated token ids plus the next append
(drawn by `TokenSource`). Times are the event loop's clock minus the run's start, so a fake
target in a virtual-time loop gives exact, instant runs.

`cutoff_s` bounds a run (capacity probes): at that time every agent still running is
cancelled; an in-flight turn that has already waited longer than the TTFT objective without
finishing counts as an SLO miss (`unfinished_turns`); turns not yet started are not counted.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dualpath.bench.target import Target, TurnRequest
from dualpath.core.errors import EngineError
from dualpath.workload.metrics import DEFAULT_SLO, SLO, TurnRecord
from dualpath.workload.tokens import TokenSource
from dualpath.workload.workload import AgentSpec, Workload

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunResult:
    records: tuple[TurnRecord, ...]
    unfinished_turns: int
    duration_s: float
    length_mismatches: int


class _Progress:
    """tqdm over turns on stderr (silent when stderr is not a terminal or disabled)."""

    def __init__(self, total: int, enabled: bool, desc: str) -> None:
        self._bar: Any = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit="turn", file=sys.stderr)

    def update(self) -> None:
        if self._bar is not None:
            self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


class _Run:
    def __init__(self, target: Target, tokens: TokenSource | None, t0: float,
                 progress: _Progress) -> None:
        if target.needs_token_ids and tokens is None:
            raise EngineError("this target needs token contents but no TokenSource was given")
        self.target = target
        self.tokens = tokens
        self.t0 = t0
        self.progress = progress
        self.records: list[TurnRecord] = []
        self.in_flight: dict[int, float] = {}
        self.length_mismatches = 0

    async def agent(self, spec: AgentSpec) -> None:
        loop = asyncio.get_running_loop()
        delay = self.t0 + spec.arrival_s - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        traj = spec.trajectory
        key = f"{traj.trajectory_id}#{spec.agent_id}"
        context: list[int] = []
        prompt_tokens = 0
        for i, turn in enumerate(traj.turns):
            prompt_tokens += turn.append_tokens
            ids: tuple[int, ...] | None = None
            if self.target.needs_token_ids and self.tokens is not None:
                context.extend(self.tokens.turn_append(traj, key, i))
                ids = tuple(context)
            start = loop.time()
            self.in_flight[spec.agent_id] = start
            result = await self.target.run_turn(
                TurnRequest(spec.agent_id, i, prompt_tokens, turn.gen_tokens, ids)
            )
            del self.in_flight[spec.agent_id]
            if result.generated_tokens != turn.gen_tokens:
                self.length_mismatches += 1
                log.warning("agent %d turn %d: asked for %d tokens, got %d", spec.agent_id, i,
                            turn.gen_tokens, result.generated_tokens)
            self.records.append(TurnRecord(
                agent_id=spec.agent_id, turn_index=i, start_s=start - self.t0,
                first_token_s=result.first_token_s - self.t0,
                second_token_s=None if result.second_token_s is None
                else result.second_token_s - self.t0,
                end_s=result.end_s - self.t0, prompt_tokens=prompt_tokens,
                generated_tokens=result.generated_tokens, cached_tokens=result.cached_tokens,
            ))
            self.progress.update()
            if self.target.needs_token_ids:
                if result.generated_token_ids is None:
                    raise EngineError("the target returned no generated token ids")
                context.extend(result.generated_token_ids)
            prompt_tokens += result.generated_tokens


async def run_workload_async(
    target: Target,
    workload: Workload,
    *,
    tokens: TokenSource | None = None,
    cutoff_s: float | None = None,
    slo: SLO = DEFAULT_SLO,
    progress: bool = False,
    desc: str = "turns",
) -> RunResult:
    """Run every agent of the workload; see the module docstring for cutoff_s."""
    loop = asyncio.get_running_loop()
    bar = _Progress(workload.num_turns, progress, desc)
    run = _Run(target, tokens, loop.time(), bar)
    tasks = [asyncio.ensure_future(run.agent(a)) for a in workload.agents]
    unfinished = 0
    try:
        if tasks:
            done, pending = await asyncio.wait(
                tasks, timeout=cutoff_s, return_when=asyncio.FIRST_EXCEPTION
            )
            for task in done:
                exc = task.exception()
                if exc is not None:
                    raise exc
            if pending:
                now = loop.time()
                unfinished = sum(1 for s in run.in_flight.values() if now - s > slo.ttft_s)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        bar.close()
    duration = loop.time() - run.t0
    records = tuple(sorted(run.records, key=lambda r: (r.start_s, r.agent_id)))
    return RunResult(records, unfinished, duration, run.length_mismatches)


def run_workload(
    target: Target,
    workload: Workload,
    *,
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
    **kwargs: Any,
) -> RunResult:
    """Synchronous wrapper: a fresh event loop (from loop_factory if given, e.g. a
    virtual-time loop in tests), the run, then `target.close()`."""

    async def main() -> RunResult:
        try:
            return await run_workload_async(target, workload, **kwargs)
        finally:
            await target.close()

    if loop_factory is None:
        return asyncio.run(main())
    loop = loop_factory()
    try:
        return loop.run_until_complete(main())
    finally:
        loop.close()
