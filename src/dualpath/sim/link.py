"""A network link shared by concurrent flows: processor sharing with two priority classes.

Within a class every active flow gets an equal share (processor sharing); between classes
the link does weighted round robin, work-conserving: with both classes active the high
class gets `hi_weight` of the capacity (DESIGN.md section 2: ~99% for model-execution
collectives on a CNIC) and the low class the rest; a class alone gets all of it.

Progress is tracked lazily with one "virtual time" per class (bytes served to each flow of
that class since the link was created), so adding or finishing a flow costs O(log n) and no
other flow is touched: a flow that starts at virtual time v with b bytes finishes when the
class's virtual time reaches v + b. The link owns at most one pending completion event; a
state change bumps `version` and makes the older event stale.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any

HI = 0  # model-execution collectives
LO = 1  # KV-cache traffic

# Called when a flow finishes: (now_s, token) -> follow-up events (or None).
CompletionCallback = Callable[[float, Any], Any]


class Link:
    """One direction of one NIC (or any shared pipe) of `capacity_bytes_s`."""

    __slots__ = (
        "_heaps", "_n", "_seq", "_v", "bin_s", "busy_s", "bytes_by_class", "capacity_bytes_s",
        "hi_weight", "last_s", "name", "on_complete", "timeline", "version",
    )

    def __init__(
        self,
        name: str,
        capacity_bytes_s: float,
        *,
        hi_weight: float = 0.99,
        on_complete: CompletionCallback | None = None,
        bin_s: float | None = None,
    ) -> None:
        if capacity_bytes_s <= 0:
            raise ValueError(f"link {name}: capacity must be positive")
        self.name = name
        self.capacity_bytes_s = float(capacity_bytes_s)
        self.hi_weight = hi_weight
        self.on_complete = on_complete
        self._v = [0.0, 0.0]
        self._heaps: list[list[tuple[float, int, Any]]] = [[], []]
        self._n = [0, 0]
        self._seq = 0
        self.last_s = 0.0
        self.version = 0
        self.busy_s = 0.0
        self.bytes_by_class = [0.0, 0.0]
        self.bin_s = bin_s
        self.timeline: list[float] = []  # bytes served per bin of bin_s seconds

    # -- queries -------------------------------------------------------------------------
    def active_flows(self, cls: int | None = None) -> int:
        return self._n[0] + self._n[1] if cls is None else self._n[cls]

    @property
    def bytes_total(self) -> float:
        return self.bytes_by_class[0] + self.bytes_by_class[1]

    def class_rates(self) -> tuple[float, float]:
        """Aggregate bytes/s given to each class right now."""
        n0, n1 = self._n
        cap = self.capacity_bytes_s
        if n0 and n1:
            return cap * self.hi_weight, cap * (1.0 - self.hi_weight)
        if n0:
            return cap, 0.0
        if n1:
            return 0.0, cap
        return 0.0, 0.0

    def reserve(self, now_s: float, nbytes: float) -> float:
        """FIFO use of a link that carries no shared flows: returns when nbytes are through.

        For a pipe whose only traffic is a queue of one engine's own transfers (a PE's
        KV send queue, a DE's buffer-to-HBM copies), first-come-first-served at full rate
        has the throughput of processor sharing, better latency, and needs no completion
        bookkeeping. Do not mix with `add` on the same link.
        """
        start = now_s if now_s > self.last_s else self.last_s
        end = start + nbytes / self.capacity_bytes_s
        self.bytes_by_class[LO] += nbytes
        self.busy_s += end - start
        if self.bin_s is not None:
            self._record(start, end, self.capacity_bytes_s)
        self.last_s = end
        return end

    # -- mutations (each returns the link's next completion event, or None) --------------
    def add(self, now_s: float, nbytes: float, token: Any, cls: int = LO) -> Any:
        """Start a flow of nbytes (> 0). Returns the follow-up event list."""
        self._advance(now_s)
        self._seq += 1
        heapq.heappush(self._heaps[cls], (self._v[cls] + nbytes, self._seq, token))
        self._n[cls] += 1
        return self._next_event()

    def set_capacity(self, now_s: float, capacity_bytes_s: float) -> Any:
        self._advance(now_s)
        self.capacity_bytes_s = float(capacity_bytes_s)
        return self._next_event()

    # -- internals -----------------------------------------------------------------------
    def _advance(self, now_s: float) -> None:
        dt = now_s - self.last_s
        if dt <= 0.0:
            return
        n0, n1 = self._n
        if n0 or n1:
            r0, r1 = self.class_rates()
            if n0:
                self._v[0] += r0 * dt / n0
                self.bytes_by_class[0] += r0 * dt
            if n1:
                self._v[1] += r1 * dt / n1
                self.bytes_by_class[1] += r1 * dt
            self.busy_s += dt
            if self.bin_s is not None:
                self._record(self.last_s, now_s, r0 + r1)
        self.last_s = now_s

    def _record(self, t0: float, t1: float, rate: float) -> None:
        bin_s = self.bin_s
        assert bin_s is not None
        tl = self.timeline
        b = int(t0 / bin_s)
        while t0 < t1:
            edge = min(t1, (b + 1) * bin_s)
            while len(tl) <= b:
                tl.append(0.0)
            tl[b] += rate * (edge - t0)
            t0 = edge
            b += 1

    def _next_event(self) -> Any:
        self.version += 1
        r0, r1 = self.class_rates()
        best = float("inf")
        for cls, rate in ((0, r0), (1, r1)):
            n = self._n[cls]
            if n:
                left = self._heaps[cls][0][0] - self._v[cls]
                dt = max(left, 0.0) * n / rate
                if dt < best:
                    best = dt
        if best == float("inf"):
            return None
        return ((self.last_s + best, self._on_done, self.version),)

    def _on_done(self, now_s: float, version: int) -> Any:
        if version != self.version:
            return None
        self._advance(now_s)
        done: list[Any] = []
        for cls in (0, 1):
            heap = self._heaps[cls]
            v = self._v[cls]
            while heap and heap[0][0] <= v + 1e-9 * heap[0][0] + 1e-3:
                done.append(heapq.heappop(heap)[2])
                self._n[cls] -= 1
        follow: list[Any] = []
        nxt = self._next_event()
        if nxt:
            follow.extend(nxt)
        cb = self.on_complete
        if cb is not None:
            for token in done:
                ev = cb(now_s, token)
                if ev:
                    follow.extend(ev)
        return follow
