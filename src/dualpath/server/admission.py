"""The server's front door: at most `max_running` requests in the backend, a bounded FIFO queue.

`acquire` either takes a running slot, waits in line, or raises `QueueFull` (-> HTTP 429) /
`Draining` (-> HTTP 503). `release` hands the slot to the oldest waiter. A waiter that is
cancelled (its client went away) leaves the line without taking a slot.
"""

from __future__ import annotations

import asyncio
from collections import deque

from dualpath.core.errors import UserInputError


class QueueFull(Exception):
    """No running slot and the waiting line is full."""


class Draining(Exception):
    """The server is shutting down and admits nothing new."""


class Admission:
    """Counting semaphore with a bounded FIFO wait queue. Single event loop, not thread-safe."""

    def __init__(self, max_running: int, max_waiting: int) -> None:
        if max_running < 1 or max_waiting < 0:
            raise UserInputError(
                f"need max_running >= 1 and max_waiting >= 0, got {max_running}, {max_waiting}"
            )
        self.max_running = max_running
        self.max_waiting = max_waiting
        self.running = 0
        self.admitted_total = 0  # requests that got a running slot, ever
        self._waiters: deque[asyncio.Future[None]] = deque()
        self.draining = False

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @property
    def busy(self) -> bool:
        return self.running > 0 or bool(self._waiters)

    def check(self) -> None:
        """Raise QueueFull / Draining if `acquire` would now, without mutating anything: lets
        a handler refuse an overloaded request before reading and parsing its body."""
        if self.draining:
            raise Draining
        full = self.running >= self.max_running or bool(self._waiters)
        if full and len(self._waiters) >= self.max_waiting:
            raise QueueFull

    async def acquire(self) -> None:
        """Take a running slot (mutates). Raises QueueFull or Draining without waiting."""
        if self.draining:
            raise Draining
        if self.running < self.max_running and not self._waiters:
            self.running += 1
            self.admitted_total += 1
            return
        if len(self._waiters) >= self.max_waiting:
            raise QueueFull
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
            self.admitted_total += 1
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                # The slot was handed to us just as we were cancelled: pass it on.
                self.release()
            elif fut in self._waiters:
                self._waiters.remove(fut)
            raise

    def release(self) -> None:
        """Give back a slot (mutates): the oldest live waiter gets it, else it is freed."""
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # the slot moves to the waiter; `running` is unchanged
                return
        self.running -= 1
