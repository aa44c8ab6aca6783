"""`Arena`: a first-fit allocator over one numpy buffer (the Mooncake receive arena).

Regions of received messages are returned from finalizers (whatever thread drops the last
view, possibly inside a garbage collection that runs while this thread holds the arena
lock), so finalizers only queue the region (`free_later`, lock-free) and the queue is
drained by the next locked call. Adjacent free regions are merged.
"""

from __future__ import annotations

import bisect
import collections
import threading

import numpy as np

ALIGN = 64  # callers round sizes up to this: each payload array starts on a cache line


class Arena:
    """First-fit allocator over one numpy buffer (offsets and sizes multiples of ALIGN in practice)."""

    def __init__(self, nbytes: int) -> None:
        self.buffer = np.zeros(nbytes, dtype=np.uint8)
        self.address = self.buffer.ctypes.data
        self._lock = threading.Lock()
        self._free_starts: list[int] = [0]
        self._free_sizes: dict[int, int] = {0: nbytes}
        self._returned: collections.deque[tuple[int, int]] = collections.deque()

    def alloc(self, nbytes: int) -> int | None:
        with self._lock:
            self._drain()
            for start in self._free_starts:
                size = self._free_sizes[start]
                if size >= nbytes:
                    self._free_starts.remove(start)
                    del self._free_sizes[start]
                    if size > nbytes:
                        self._insert(start + nbytes, size - nbytes)
                    return start
            return None

    def free_later(self, start: int, nbytes: int) -> None:
        """Return a region from a finalizer (never blocks; applied by the next call)."""
        self._returned.append((start, nbytes))

    def free(self, start: int, nbytes: int) -> None:
        with self._lock:
            self._drain()
            self._free(start, nbytes)

    def free_bytes(self) -> int:
        with self._lock:
            self._drain()
            return sum(self._free_sizes.values())

    def _drain(self) -> None:
        while self._returned:
            self._free(*self._returned.popleft())

    def _free(self, start: int, nbytes: int) -> None:
        self._insert(start, nbytes)
        i = bisect.bisect_left(self._free_starts, start)
        # Merge with the right neighbour, then the left one.
        if i + 1 < len(self._free_starts) and start + self._free_sizes[start] == self._free_starts[i + 1]:
            right = self._free_starts.pop(i + 1)
            self._free_sizes[start] += self._free_sizes.pop(right)
        if i > 0:
            left = self._free_starts[i - 1]
            if left + self._free_sizes[left] == start:
                self._free_sizes[left] += self._free_sizes.pop(start)
                self._free_starts.pop(i)

    def _insert(self, start: int, nbytes: int) -> None:
        bisect.insort(self._free_starts, start)
        self._free_sizes[start] = nbytes
