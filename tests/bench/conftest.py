"""Fakes for the benchmark driver: a virtual-time event loop and in-process targets.

The virtual loop's clock jumps to the next timer instead of sleeping, so a fake target that
`await asyncio.sleep(latency)`s gives exact, instant runs (no wall-clock assertions).
"""

from __future__ import annotations

import argparse
import asyncio
import selectors
from collections.abc import Callable
from typing import Any

import pytest

from dualpath.bench.target import Target, TurnRequest, TurnResult


class _VirtualSelector:
    def __init__(self, inner: selectors.BaseSelector) -> None:
        self._inner = inner
        self.now = 0.0

    def select(self, timeout: float | None = None) -> list[Any]:
        events = self._inner.select(0)
        if not events and timeout is not None and timeout > 0:
            self.now += timeout
        return events

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self._vsel = _VirtualSelector(selectors.DefaultSelector())
        super().__init__(selector=self._vsel)  # type: ignore[arg-type]

    def time(self) -> float:
        return self._vsel.now


class FixedLatencyTarget(Target):
    """TTFT and TPOT fixed; logs every turn's (agent, turn, start, end, prompt ids)."""

    def __init__(self, ttft_s: float = 0.5, tpot_s: float = 0.01, needs_ids: bool = False,
                 short_by: int = 0) -> None:
        self.ttft_s, self.tpot_s = ttft_s, tpot_s
        self.needs_token_ids = needs_ids
        self.short_by = short_by
        self.log: list[dict[str, Any]] = []

    async def run_turn(self, request: TurnRequest) -> TurnResult:
        loop = asyncio.get_running_loop()
        start = loop.time()
        await asyncio.sleep(self.ttft_s)
        first = loop.time()
        n = max(1, request.gen_tokens - self.short_by)
        await asyncio.sleep(self.tpot_s * (n - 1))
        end = loop.time()
        ids = tuple(10_000 + request.agent_id * 100 + request.turn_index for _ in range(n))
        self.log.append({"agent": request.agent_id, "turn": request.turn_index, "start": start,
                         "end": end, "prompt": request.prompt_token_ids,
                         "prompt_tokens": request.prompt_tokens, "gen": ids})
        second = first + self.tpot_s if n >= 2 else None
        return TurnResult(first, second, end, n, cached_tokens=request.prompt_tokens // 2,
                          generated_token_ids=ids if self.needs_token_ids else None)


class QueueTarget(Target):
    """One FIFO prefill server (service_s per turn, so at most 1/service_s turns/s), then a
    fixed-TPOT decode that does not queue: its turn capacity is known exactly."""

    def __init__(self, service_s: float, tpot_s: float = 0.01) -> None:
        self.service_s, self.tpot_s = service_s, tpot_s
        self._lock: asyncio.Lock | None = None

    async def run_turn(self, request: TurnRequest) -> TurnResult:
        if self._lock is None:
            self._lock = asyncio.Lock()
        loop = asyncio.get_running_loop()
        async with self._lock:
            await asyncio.sleep(self.service_s)
        first = loop.time()
        await asyncio.sleep(self.tpot_s * (request.gen_tokens - 1))
        end = loop.time()
        second = first + self.tpot_s if request.gen_tokens >= 2 else None
        return TurnResult(first, second, end, request.gen_tokens)

    async def close(self) -> None:
        self._lock = None  # the next run has a fresh event loop


@pytest.fixture
def virtual_loop() -> Callable[[], asyncio.AbstractEventLoop]:
    return VirtualTimeLoop


@pytest.fixture
def fixed_target() -> type[FixedLatencyTarget]:
    return FixedLatencyTarget


@pytest.fixture
def queue_target() -> type[QueueTarget]:
    return QueueTarget


def bench_args(module: Any, argv: list[str]) -> argparse.Namespace:
    """Parse argv with a benchmark module's flags (plus --json, as cli/bench adds it)."""
    p = argparse.ArgumentParser()
    p.add_argument("--json")
    module.add_arguments(p)
    return p.parse_args(argv)


@pytest.fixture
def make_args() -> Callable[[Any, list[str]], argparse.Namespace]:
    return bench_args
