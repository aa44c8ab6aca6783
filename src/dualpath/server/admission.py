"""The server's front door: at most `max_running` requests in the backend, a bounded FIFO queue.

`acquire(n)` either takes n running slots (a request with `n` choices runs n generations),
waits in line, or raises `QueueFull` (-> HTTP 429) / `Draining` (-> HTTP 503). `release(n)`
hands slots to the oldest waiters, in order: a waiter for several slots holds back those
behind it until enough are free, so nobody starves. A waiter that is cancelled (its client
went away) leaves the line without taking a slot.
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
        self._waiters: deque[tuple[asyncio.Future[None], int]] = deque()
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

    async def acquire(self, slots: int = 1) -> None:
        """Take `slots` running slots (mutates). Raises QueueFull or Draining without waiting;
        `slots` must be in [1, max_running]."""
        if not 1 <= slots <= self.max_running:
            raise UserInputError(f"a request needs 1 to {self.max_running} slots, not {slots}")
        if self.draining:
            raise Draining
        if self.running + slots <= self.max_running and not self._waiters:
            self.running += slots
            self.admitted_total += 1
            return
        if len(self._waiters) >= self.max_waiting:
            raise QueueFull
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((fut, slots))
        try:
            await fut
            self.admitted_total += 1
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                # The slots were handed to us just as we were cancelled: pass them on.
                self.release(slots)
            else:
                self._waiters = deque(w for w in self._waiters if w[0] is not fut)
                self._wake()  # a big waiter leaving may let smaller ones behind it in
            raise

    def release(self, slots: int = 1) -> None:
        """Give back `slots` slots (mutates): the oldest live waiters get them, in order."""
        self.running -= slots
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            fut, want = self._waiters[0]
            if fut.done():
                self._waiters.popleft()
                continue
            if self.running + want > self.max_running:
                return
            self._waiters.popleft()
            self.running += want  # the slots move to the waiter
            fut.set_result(None)
