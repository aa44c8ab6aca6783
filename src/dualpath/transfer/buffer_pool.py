"""`BufferPool`: a byte budget for an engine's host buffer (the PE buffer or the DE buffer).

A request's reader reserves the bytes of its hit prefix before it reads (waiting while the
buffer is full), and the engine releases them when the request no longer needs them (the
prefill consumed them, the last layer left for the peer, or the request was aborted). The
blocks themselves are ordinary numpy arrays held by the request; the pool only accounts for
them, so the buffer can never hold more than its capacity.

Mutating calls: reserve, release. Thread safe.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable
from dataclasses import dataclass

from dualpath.core.errors import ConfigError, TransferError


@dataclass(frozen=True)
class BufferStats:
    """Bytes; reserved <= capacity always holds."""

    name: str
    capacity_bytes: int
    reserved_bytes: int
    peak_reserved_bytes: int
    owners: int
    refused_reservations: int


class BufferPool:
    """Bounded host memory shared by the requests an engine is working on."""

    def __init__(self, name: str, capacity_bytes: int) -> None:
        if capacity_bytes <= 0:
            raise ConfigError(f"buffer {name}: capacity must be > 0 bytes")
        self.name = name
        self.capacity_bytes = capacity_bytes
        self._lock = threading.Lock()
        self._owners: dict[Hashable, int] = {}
        self._reserved = 0
        self._peak = 0
        self._refused = 0

    @property
    def free_bytes(self) -> int:
        with self._lock:
            return self.capacity_bytes - self._reserved

    def reserve(self, owner: Hashable, nbytes: int) -> None:
        """Reserve `nbytes` for `owner` (adds to an existing reservation); raises
        TransferError, reserving nothing, when it does not fit now."""
        if nbytes < 0:
            raise TransferError(f"buffer {self.name}: cannot reserve {nbytes} bytes")
        with self._lock:
            if self._reserved + nbytes > self.capacity_bytes:
                self._refused += 1
                raise TransferError(
                    f"buffer {self.name}: {nbytes} bytes do not fit "
                    f"({self.capacity_bytes - self._reserved} free of {self.capacity_bytes})")
            self._owners[owner] = self._owners.get(owner, 0) + nbytes
            self._reserved += nbytes
            self._peak = max(self._peak, self._reserved)

    def release(self, owner: Hashable) -> int:
        """Drop the owner's reservation; return the bytes freed (0 if unknown)."""
        with self._lock:
            nbytes = self._owners.pop(owner, 0)
            self._reserved -= nbytes
            return nbytes

    def stats(self) -> BufferStats:
        with self._lock:
            return BufferStats(self.name, self.capacity_bytes, self._reserved, self._peak,
                               len(self._owners), self._refused)
