"""The event loop: a heap of timed callbacks, touched only by the loop itself.

As in Vidur, a handler receives the current time and its argument and *returns* its
follow-up events (or None); it never pushes to the heap. Ties are broken by insertion
order (a monotone sequence number), so a run is a pure function of its inputs.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable
from typing import Any

# A follow-up event: (time_s, handler, argument). The handler is called as handler(now, arg).
Event = tuple[float, Callable[[float, Any], "Iterable[Event] | None"], Any]
Handler = Callable[[float, Any], "Iterable[Event] | None"]


class EventLoop:
    """Runs events in (time, insertion order). `now_s` never decreases."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Handler, Any]] = []
        self._seq = 0
        self.now_s = 0.0
        self.events_run = 0

    def schedule(self, time_s: float, handler: Handler, arg: Any = None) -> None:
        """Seed an event from outside a handler (initial arrivals). Never into the past."""
        if time_s < self.now_s:
            time_s = self.now_s
        self._seq += 1
        heapq.heappush(self._heap, (time_s, self._seq, handler, arg))

    def __len__(self) -> int:
        return len(self._heap)

    def run(self, until_s: float = float("inf"), tick: Callable[[float], None] | None = None,
            tick_every: int = 1 << 16) -> None:
        """Run events until the heap is empty or the next event is later than until_s.

        tick: called with the current time every `tick_every` events (a power of two), for
        progress reporting.
        """
        if tick_every < 1 or tick_every & (tick_every - 1):
            raise ValueError("tick_every must be a power of two")
        heap = self._heap
        push = heapq.heappush
        pop = heapq.heappop
        seq = self._seq
        count = 0
        mask = tick_every - 1 if tick is not None else -1
        try:
            while heap:
                if heap[0][0] > until_s:
                    break
                t, _, handler, arg = pop(heap)
                self.now_s = t
                count += 1
                if count & mask == 0 and tick is not None:
                    tick(t)
                follow = handler(t, arg)
                if follow:
                    for ft, fh, fa in follow:
                        seq += 1
                        push(heap, (ft if ft > t else t, seq, fh, fa))
        finally:
            self._seq = seq
            self.events_run += count
