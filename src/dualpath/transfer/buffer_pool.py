"""`BufferPool`: a byte budget for an engine's host buffer (the PE buffer or the DE buffer).

The engine asks `can_reserve(nbytes)` before it starts a request's load and only then
`reserve`s, so nothing fails halfway: every array the request later parks in the buffer
(`put`) is counted against its reservation, and `release` drops the arrays and returns the
bytes. The arrays themselves are ordinary numpy arrays (store reads, received frames); the
pool only accounts for them and keeps them reachable.

Mutating calls: reserve, put, pop, release. Thread safe.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable
from dataclasses import dataclass, field

import numpy as np

from dualpath.core.errors import ConfigError, TransferError


@dataclass(frozen=True)
class BufferStats:
    """capacity/reserved/used in bytes; used <= reserved <= capacity always holds."""

    name: str
    capacity_bytes: int
    reserved_bytes: int
    used_bytes: int
    peak_reserved_bytes: int
    owners: int
    arrays: int
    refused_reservations: int


@dataclass
class _Owner:
    reserved_bytes: int
    used_bytes: int = 0
    arrays: dict[Hashable, np.ndarray] = field(default_factory=dict)


class BufferPool:
    """Bounded host memory shared by the requests an engine is working on."""

    def __init__(self, name: str, capacity_bytes: int) -> None:
        if capacity_bytes <= 0:
            raise ConfigError(f"buffer {name}: capacity must be > 0 bytes")
        self.name = name
        self.capacity_bytes = capacity_bytes
        self._lock = threading.Lock()
        self._owners: dict[Hashable, _Owner] = {}
        self._reserved = 0
        self._peak = 0
        self._refused = 0

    @property
    def free_bytes(self) -> int:
        with self._lock:
            return self.capacity_bytes - self._reserved

    def can_reserve(self, nbytes: int) -> bool:
        """Whether `reserve(_, nbytes)` would succeed now (counts refusals for stats)."""
        with self._lock:
            ok = self._reserved + nbytes <= self.capacity_bytes
            if not ok:
                self._refused += 1
            return ok

    def reserve(self, owner: Hashable, nbytes: int) -> None:
        """Reserve `nbytes` for `owner` (adds to an existing reservation).

        Raises TransferError when it does not fit: callers check `can_reserve` first.
        """
        if nbytes < 0:
            raise TransferError(f"buffer {self.name}: cannot reserve {nbytes} bytes")
        with self._lock:
            if self._reserved + nbytes > self.capacity_bytes:
                raise TransferError(
                    f"buffer {self.name}: {nbytes} bytes do not fit "
                    f"({self.capacity_bytes - self._reserved} free of {self.capacity_bytes})")
            entry = self._owners.setdefault(owner, _Owner(0))
            entry.reserved_bytes += nbytes
            self._reserved += nbytes
            self._peak = max(self._peak, self._reserved)

    def put(self, owner: Hashable, key: Hashable, array: np.ndarray) -> None:
        """Park `array` under (owner, key), counted against the owner's reservation.

        Replacing an existing key first returns that array's bytes. Raises TransferError if
        the owner has no reservation or the array would exceed it.
        """
        with self._lock:
            entry = self._owners.get(owner)
            if entry is None:
                raise TransferError(f"buffer {self.name}: {owner!r} has no reservation")
            old = entry.arrays.get(key)
            used = entry.used_bytes - (old.nbytes if old is not None else 0) + array.nbytes
            if used > entry.reserved_bytes:
                raise TransferError(
                    f"buffer {self.name}: {owner!r} would use {used} bytes of its "
                    f"{entry.reserved_bytes} reserved")
            entry.arrays[key] = array
            entry.used_bytes = used

    def get(self, owner: Hashable, key: Hashable) -> np.ndarray | None:
        with self._lock:
            entry = self._owners.get(owner)
            return None if entry is None else entry.arrays.get(key)

    def keys(self, owner: Hashable) -> list[Hashable]:
        """The keys `owner` has parked, in insertion order."""
        with self._lock:
            entry = self._owners.get(owner)
            return [] if entry is None else list(entry.arrays)

    def pop(self, owner: Hashable, key: Hashable) -> np.ndarray | None:
        """Remove and return one array; its bytes stay reserved for the owner."""
        with self._lock:
            entry = self._owners.get(owner)
            if entry is None or key not in entry.arrays:
                return None
            array = entry.arrays.pop(key)
            entry.used_bytes -= array.nbytes
            return array

    def release(self, owner: Hashable) -> int:
        """Drop the owner's arrays and reservation; return the bytes freed (0 if unknown)."""
        with self._lock:
            entry = self._owners.pop(owner, None)
            if entry is None:
                return 0
            self._reserved -= entry.reserved_bytes
            return entry.reserved_bytes

    def stats(self) -> BufferStats:
        with self._lock:
            return BufferStats(
                name=self.name,
                capacity_bytes=self.capacity_bytes,
                reserved_bytes=self._reserved,
                used_bytes=sum(e.used_bytes for e in self._owners.values()),
                peak_reserved_bytes=self._peak,
                owners=len(self._owners),
                arrays=sum(len(e.arrays) for e in self._owners.values()),
                refused_reservations=self._refused,
            )

    def check_integrity(self) -> None:
        """Raise TransferError if the books do not balance (run it when idle, in tests)."""
        with self._lock:
            total = 0
            for owner, entry in self._owners.items():
                used = sum(a.nbytes for a in entry.arrays.values())
                if used != entry.used_bytes or used > entry.reserved_bytes:
                    raise TransferError(f"buffer {self.name}: bad accounting for {owner!r}")
                total += entry.reserved_bytes
            if total != self._reserved or self._reserved > self.capacity_bytes:
                raise TransferError(f"buffer {self.name}: reserved bytes do not add up")
