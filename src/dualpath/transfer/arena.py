"""`Arena`: a first-fit allocator over one numpy buffer (the Mooncake receive arena).

Regions are freed from whatever thread drops the last view of a received message, so every
call takes the lock. Adjacent free regions are merged on free.
"""

from __future__ import annotations

import bisect
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

    def alloc(self, nbytes: int) -> int | None:
        with self._lock:
            for start in self._free_starts:
                size = self._free_sizes[start]
                if size >= nbytes:
                    self._free_starts.remove(start)
                    del self._free_sizes[start]
                    if size > nbytes:
                        self._insert(start + nbytes, size - nbytes)
                    return start
            return None

    def free(self, start: int, nbytes: int) -> None:
        with self._lock:
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

    def free_bytes(self) -> int:
        with self._lock:
            return sum(self._free_sizes.values())

    def _insert(self, start: int, nbytes: int) -> None:
        bisect.insort(self._free_starts, start)
        self._free_sizes[start] = nbytes
