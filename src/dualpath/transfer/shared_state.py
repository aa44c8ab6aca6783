"""A small array of float64 counters in a file, shared by every process that opens it.

The emulated NICs and the per-node read queue keep their state here: an SNIC is shared by
all engine processes of a node, so its "next free time" and byte counters must live outside
any one process. The file is mmap'd (put it on /dev/shm for speed); every read-modify-write
happens under `locked()`, which takes a per-object thread lock and then an exclusive
`flock` on the file (flock alone does not separate threads that share one descriptor).

All values are float64 (integers are exact up to 2**53, enough for byte counters).
"""

from __future__ import annotations

import fcntl
import mmap
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dualpath.core.errors import TransferError

_MAGIC = 0x44504E4943  # "DPNIC"; slot 0 of every file
_HEADER_SLOTS = 2  # magic, number of user slots


class SharedCounters:
    """`num_slots` float64 values in the file at `path` (created zeroed if missing).

    Every process opening the same path with the same `num_slots` sees the same values.
    Read and write the values only inside `with counters.locked() as values:` where
    `values` is a memoryview of doubles (index 0 is the first user slot).
    """

    def __init__(self, path: str | os.PathLike[str], num_slots: int) -> None:
        self.path = Path(path)
        self._num_slots = num_slots
        self._thread_lock = threading.Lock()
        size = 8 * (_HEADER_SLOTS + num_slots)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise TransferError(f"cannot open shared state {self.path}: {exc}") from exc
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                current = os.fstat(self._fd).st_size
                if current == 0:
                    os.ftruncate(self._fd, size)
                elif current != size:
                    raise TransferError(
                        f"shared state {self.path} has {current} bytes, expected {size}: "
                        "another kind of object uses this path"
                    )
                self._mmap = mmap.mmap(self._fd, size)
                self._all = memoryview(self._mmap).cast("d")
                if self._all[0] == 0.0:
                    self._all[0] = float(_MAGIC)
                    self._all[1] = float(num_slots)
                elif self._all[0] != float(_MAGIC) or self._all[1] != float(num_slots):
                    raise TransferError(f"shared state {self.path} has an unexpected layout")
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        except BaseException:
            os.close(self._fd)
            raise
        # Typed Any: typeshed's memoryview is int-only, these are doubles.
        self._values: Any = self._all[_HEADER_SLOTS:]
        self._closed = False

    @contextmanager
    def locked(self) -> Iterator[Any]:
        """Hold the cross-process lock; yield the values (valid only inside the block)."""
        with self._thread_lock:
            if self._closed:
                raise TransferError(f"shared state {self.path} is closed")
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                yield self._values
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def snapshot(self) -> list[float]:
        """A consistent copy of all values."""
        with self.locked() as values:
            return list(values)

    def reset(self) -> None:
        """Zero every value (a launcher starting a fresh run on an old file)."""
        with self.locked() as values:
            for i in range(len(values)):
                values[i] = 0.0

    def close(self) -> None:
        """Unmap and close (the file stays for other processes). Idempotent."""
        with self._thread_lock:
            if self._closed:
                return
            self._closed = True
            self._values.release()
            self._all.release()
            self._mmap.close()
            os.close(self._fd)
