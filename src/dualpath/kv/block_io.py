"""Plain-POSIX I/O helpers of the file store: vectored reads and writes, O_DIRECT opens.

Kept apart from `file_store` so the store reads as policy (what to verify, when a block is
a miss) and this module as mechanism (how bytes move).
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

import numpy as np

from dualpath.kv.layout import PAGE_ALIGN_BYTES

O_DIRECT: int = getattr(os, "O_DIRECT", 0)


def direct_io_possible(*arrays: np.ndarray) -> bool:
    """Whether O_DIRECT can read into these buffers: page-aligned start and length."""
    return O_DIRECT != 0 and all(
        a.ctypes.data % PAGE_ALIGN_BYTES == 0 and a.nbytes % PAGE_ALIGN_BYTES == 0 for a in arrays
    )


def open_for_read(path: str | Path, direct: bool) -> tuple[int, bool]:
    """Open `path` read-only, with O_DIRECT if asked and the file system allows it.

    Returns (fd, whether O_DIRECT is on). FileNotFoundError propagates (a plain miss).
    """
    if direct:
        try:
            return os.open(path, os.O_RDONLY | O_DIRECT), True
        except OSError as exc:
            if exc.errno != errno.EINVAL:  # EINVAL: this FS has no O_DIRECT (e.g. tmpfs)
                raise
    return os.open(path, os.O_RDONLY), False


def read_into(fd: int, bufs: list[memoryview], offset: int, *, retry_short: bool = True) -> int:
    """Fill `bufs` in order from `offset`; returns the bytes read (short only at end of file).

    With retry_short=False (O_DIRECT, where a continuation would be misaligned) one short
    read is returned as is and the caller decides.
    """
    total = sum(len(b) for b in bufs)
    got = os.preadv(fd, bufs, offset)
    while retry_short and 0 < got < total:
        skip, rest = got, []
        for b in bufs:
            if skip >= len(b):
                skip -= len(b)
                continue
            rest.append(b[skip:])
            skip = 0
        n = os.preadv(fd, rest, offset + got)
        if n == 0:
            break
        got += n
    return got


def write_all(fd: int, parts: list[bytes | memoryview]) -> None:
    """Write `parts` back to back with one writev (finishing a rare partial write)."""
    total = sum(len(p) for p in parts)
    written = os.writev(fd, parts)
    if written == total:
        return
    flat = b"".join(parts)
    while written < total:
        written += os.write(fd, flat[written:])


def unlink_quietly(path: str | Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def sweep_if_stale(path: str, now_s: float, max_age_s: float) -> None:
    """Remove a temp file left by a writer that died (older than max_age_s)."""
    with contextlib.suppress(OSError):
        if now_s - os.stat(path).st_mtime > max_age_s:
            os.unlink(path)
