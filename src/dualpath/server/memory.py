"""Giving memory back to the OS after a burst, so a server's RSS returns to its baseline.

Measured with the echo server (`tests/server/test_overload_memory.py`): after bursts of 200
concurrent 200k-token requests its RSS went 108 -> 245 MiB and stayed there, although nothing
was leaked. glibc's malloc raises its mmap threshold each time a large block is freed
("dynamic threshold"), so later request bodies, token lists and buffers come from the heap,
whose free pages are kept. Two settings undo that:

- `pin_malloc_thresholds()` fixes the mmap threshold at 128 KiB (glibc's initial value, and
  what `MALLOC_MMAP_THRESHOLD_=131072` would do): every large allocation is its own mapping,
  unmapped the moment it is freed. Small allocations are unaffected.
- `trim()` (`malloc_trim(0)`) returns the heap's free pages; `IdleTrimmer` calls it once the
  server has been idle for a moment after serving requests, never while it is busy.

Both are no-ops where glibc is not the allocator.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
from collections.abc import Callable

logger = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 128 * 1024


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt  # noqa: B018 - probe: glibc (and musl) export these
        libc.malloc_trim  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


def pin_malloc_thresholds() -> bool:
    """Fix glibc's mmap and trim thresholds (process-wide). True if it took effect."""
    libc = _libc()
    if libc is None:
        return False
    ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    ok = bool(libc.mallopt(_M_TRIM_THRESHOLD, 2 * MMAP_THRESHOLD_BYTES)) and ok
    return ok


def trim() -> None:
    """Return free heap pages to the OS (malloc_trim(0)); cheap when there is nothing to give."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


class IdleTrimmer:
    """Calls `trim()` once per burst: when `busy()` has been false for `idle_s` after work
    (`activity()` changed). Run `run()` as a task for the life of the server."""

    def __init__(self, busy: Callable[[], bool], activity: Callable[[], int],
                 idle_s: float = 1.0) -> None:
        self._busy = busy
        self._activity = activity
        self._idle_s = idle_s
        self.trims = 0

    async def run(self) -> None:
        trimmed_at = self._activity()
        while True:
            await asyncio.sleep(self._idle_s)
            seen = self._activity()
            if seen == trimmed_at or self._busy():
                continue
            await asyncio.sleep(self._idle_s)  # idle for a whole interval, not just now
            if self._busy() or self._activity() != seen:
                continue
            trim()
            self.trims += 1
            trimmed_at = seen
