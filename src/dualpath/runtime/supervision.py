"""Keeping the scheduler process's loops alive, and telling whether they are.

Each loop runs under `Supervisor.start`: if it raises, the error is logged, counted, and the
loop is started again after a short pause; a loop calls `tick(name)` every time round, so a
loop that is stuck (or keeps failing) shows up in `problems` and readiness goes 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

logger = logging.getLogger(__name__)

RESTART_PAUSE_S = 0.5
STALL_S = 5.0  # a loop that has not ticked for this long is reported


class Supervisor:
    def __init__(self) -> None:
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._ticks: dict[str, float] = {}
        self.failures: dict[str, int] = {}

    def start(self, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        self._ticks[name] = time.monotonic()
        self._tasks[name] = asyncio.create_task(self._run(name, loop), name=name)

    async def _run(self, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        while True:
            try:
                await loop()
                logger.error("the %s loop returned; starting it again", name)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("the %s loop failed; starting it again", name)
            self.failures[name] = self.failures.get(name, 0) + 1
            await asyncio.sleep(RESTART_PAUSE_S)

    def tick(self, name: str) -> None:
        self._ticks[name] = time.monotonic()

    def problems(self, now_s: float) -> list[str]:
        return [f"the {name} loop has not run for {now_s - t:.1f} s"
                for name, t in sorted(self._ticks.items()) if now_s - t > STALL_S]

    async def stop(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        for task in self._tasks.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        self._ticks.clear()
