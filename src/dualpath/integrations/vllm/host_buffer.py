"""`HostBuffers`: the bounded host memory a connector stages KV in (PE buffer / DE buffer).

`allocate(owner, shape)` waits (up to a timeout) until the bytes fit under the capacity, so
the connector never holds more than `capacity_bytes` of staged KV, and returns a uint8 array
that is page-aligned (direct-I/O reads from the store land straight in it) or page-locked on
an accelerator (non-blocking device copies). `release(owner)` frees everything an owner
holds. Mutating calls: allocate, release. Thread safe.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from dualpath.core.errors import ConfigError, TransferError
from dualpath.integrations.vllm.kv_layout import host_empty
from dualpath.kv.layout import aligned_empty


class HostBuffers:
    """A byte budget over staged KV arrays, keyed by owner (a request key)."""

    def __init__(self, capacity_bytes: int, *, pinned: bool = False) -> None:
        if capacity_bytes < 1:
            raise ConfigError("host buffer capacity must be >= 1 byte")
        self.capacity_bytes = capacity_bytes
        self.pinned = pinned
        self._cond = threading.Condition()
        self._held: dict[str, int] = {}
        self._used = 0
        self.peak_bytes = 0

    @property
    def used_bytes(self) -> int:
        with self._cond:
            return self._used

    def held_by(self, owner: str) -> int:
        with self._cond:
            return self._held.get(owner, 0)

    def owners(self) -> int:
        with self._cond:
            return len(self._held)

    def allocate(self, owner: str, shape: tuple[int, ...], timeout_s: float) -> np.ndarray:
        """A uint8 array of `shape` charged to `owner`; TransferError if it never fits."""
        nbytes = int(np.prod(shape, dtype=np.int64))
        if nbytes > self.capacity_bytes:
            raise TransferError(f"{nbytes} bytes of KV can never fit the {self.capacity_bytes}-"
                                "byte host buffer")
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._used + nbytes > self.capacity_bytes:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TransferError(f"host buffer full: {nbytes} bytes did not fit within "
                                        f"{timeout_s:g} s ({self._used} of "
                                        f"{self.capacity_bytes} in use)")
                self._cond.wait(left)
            self._used += nbytes
            self._held[owner] = self._held.get(owner, 0) + nbytes
            self.peak_bytes = max(self.peak_bytes, self._used)
        try:
            return host_empty(shape, pinned=True) if self.pinned else aligned_empty(shape)
        except BaseException:
            self._give_back(owner, nbytes)
            raise

    def release(self, owner: str) -> int:
        """Free all bytes `owner` holds (the caller drops its arrays); returns the bytes."""
        with self._cond:
            nbytes = self._held.pop(owner, 0)
            self._used -= nbytes
            self._cond.notify_all()
            return nbytes

    def _give_back(self, owner: str, nbytes: int) -> None:
        with self._cond:
            self._held[owner] -= nbytes
            if self._held[owner] == 0:
                del self._held[owner]
            self._used -= nbytes
            self._cond.notify_all()
