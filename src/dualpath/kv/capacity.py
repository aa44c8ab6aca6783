"""Capacity of a file store root shared by several processes: a size ledger and LRU-leaf eviction.

Every process that writes a root (each decode engine, `dualpath generate`, ...) goes through
the same two pieces, so the cap holds for the root as a whole:

- `SizeLedger` is one small file at the root holding the bytes of every block file (and
  every block being written) under the root, guarded by `flock`. A put creates its temp
  file, then reserves the block's size in the ledger (evicting first if the cap would be
  passed), then writes, then renames under the lock (`Capacity.commit`); a put that cannot
  make room is dropped. So the ledger never exceeds the cap, and the files on disk never
  exceed the ledger.
- `Evictor.make_room` runs under the ledger lock when a reservation does not fit: it lists
  the whole root (every geometry directory), which also resets the ledger to the exact
  total (temp files counted at their final size), and deletes least recently used LEAF
  blocks (no stored block names them as parent; `block_file` records parents) until the
  total is `low_watermark` of the cap, so rounds are rare. A block whose descendants stay
  is never deleted: a shared system prompt outlives every conversation that continues it.
  Corrupt blocks in quarantine go first.
- Recency is the block file's mtime: writes set it, reads touch it (`os.utime`), so every
  process sees every other's use. Ties and clock skew only reorder victims.
- A block being read is never deleted: readers hold a shared `flock` on the block file while
  they read, the evictor takes an exclusive one without waiting and skips the block when
  that fails, and it also skips a block whose mtime changed since it was listed. A reader
  that opened a block just before it was deleted sees a link count of 0 once it holds the
  lock and treats the block as a miss; the data it never returns was complete anyway (POSIX
  keeps an unlinked file's bytes for open descriptors), so no read is ever served from an
  evicted or partly written block.
"""

from __future__ import annotations

import contextlib
import fcntl
import heapq
import logging
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from dualpath.kv import block_file, block_io
from dualpath.kv.store_root import (
    FILE_MODE,
    QUARANTINE_DIR,
    block_file_bytes,
    geometry_dirs,
    read_geometry,
    valid_hash_name,
)

logger = logging.getLogger(__name__)

LEDGER_NAME = ".dualpath-kv-ledger"
SUFFIX = ".kvb"
_LEDGER = struct.Struct("<8sQ")
_LEDGER_MAGIC = b"DPKVLDG1"
STALE_TEMP_S = 3600.0  # a temp file this old belongs to a writer that died


class SizeLedger:
    """The byte total of a root, in `root/.dualpath-kv-ledger`, under an exclusive flock.

    `locked()` is also the root's lock for migration and eviction. Thread-safe and fork-safe
    (the descriptor is reopened in a child process: flock is per open file description).
    """

    def __init__(self, root: Path) -> None:
        self.path = root / LEDGER_NAME
        self._thread_lock = threading.Lock()
        self._fd: int | None = None
        self._pid = 0

    def _descriptor(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, FILE_MODE)
            self._pid = os.getpid()
        return self._fd

    @contextlib.contextmanager
    def locked(self) -> Iterator[LedgerView]:
        with self._thread_lock:
            fd = self._descriptor()
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield LedgerView(fd)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def read(self) -> int | None:
        """The current total (None before the first reconcile)."""
        with self.locked() as view:
            return view.get()

    def close(self) -> None:
        with self._thread_lock:
            if self._fd is not None and self._pid == os.getpid():
                os.close(self._fd)
            self._fd = None


@dataclass
class LedgerView:
    """The ledger while its lock is held."""

    fd: int

    def get(self) -> int | None:
        raw = os.pread(self.fd, _LEDGER.size, 0)
        if len(raw) != _LEDGER.size:
            return None
        magic, total = _LEDGER.unpack(raw)
        return int(total) if magic == _LEDGER_MAGIC else None

    def set(self, total: int) -> None:
        os.pwrite(self.fd, _LEDGER.pack(_LEDGER_MAGIC, max(0, total)), 0)


@dataclass
class _Entry:
    path: str
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class Listing:
    """Every block file under a root, and the exact byte total (temp files at final size)."""

    blocks: dict[str, _Entry]
    quarantined: list[_Entry]
    total_bytes: int
    inflight_parents: frozenset[str]  # parents of blocks being written (temp file names)


def list_root(root: Path, *, exclude: str | None = None) -> Listing:
    """List every geometry directory of `root` (sweeping stale temp files)."""
    blocks: dict[str, _Entry] = {}
    quarantined: list[_Entry] = []
    inflight: set[str] = set()
    total = 0
    now = time.time()
    for gdir in geometry_dirs(root):
        geometry = read_geometry(gdir)
        with os.scandir(gdir) as top:
            subdirs = [e.path for e in top if e.is_dir(follow_symlinks=False)]
        for sub in subdirs:
            in_quarantine = sub.endswith(QUARANTINE_DIR)
            with os.scandir(sub) as it:
                for e in it:
                    name = e.name
                    try:
                        st = e.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    if name.endswith(".tmp") and name.startswith("."):
                        if now - st.st_mtime > STALE_TEMP_S:
                            block_io.unlink_quietly(e.path)
                            continue
                        key, _, rest = name[1:].partition(".")
                        parent = rest.partition(".")[0]
                        if valid_hash_name(parent):
                            inflight.add(parent)
                        if e.path == exclude:
                            continue
                        final = block_file_bytes(geometry, len(key)) if geometry else st.st_size
                        total += max(final, st.st_size)
                    elif name.endswith(SUFFIX):
                        entry = _Entry(e.path, st.st_size, st.st_mtime_ns)
                        total += st.st_size
                        stem = name[: -len(SUFFIX)]
                        if in_quarantine:
                            quarantined.append(entry)
                        elif valid_hash_name(stem):
                            blocks[stem] = entry
    return Listing(blocks, quarantined, total, frozenset(inflight))


@dataclass(frozen=True)
class EvictionRound:
    evicted_blocks: int
    evicted_bytes: int
    evicted_hashes: tuple[str, ...]
    total_bytes: int  # what the root holds afterwards (exact)


class Evictor:
    """Chooses and deletes blocks; one per store instance (it caches parent links)."""

    def __init__(self, root: Path, low_watermark: float = 0.9) -> None:
        self.root = root
        self.low_watermark = low_watermark
        self._parents: dict[str, str | None] = {}  # content-addressed: never stale

    def remember_parent(self, block_hash: str, parent: str | None) -> None:
        self._parents[block_hash] = parent

    def _parent(self, block_hash: str, entry: _Entry) -> str | None:
        if block_hash not in self._parents:
            try:
                with open(entry.path, "rb", buffering=0) as f:
                    self._parents[block_hash] = block_file.read_parent(f.read(block_file.PAGE_BYTES))
            except OSError:
                return None
        return self._parents[block_hash]

    def make_room(self, need: int, max_bytes: int, *, exclude: str | None = None,
                  on_evict: Callable[[str], None] | None = None) -> EvictionRound:
        """Evict until `need` more bytes fit under `max_bytes` (and down to the low watermark).

        The caller holds the ledger lock and sets the ledger from the result.
        """
        listing = list_root(self.root, exclude=exclude)
        total = listing.total_bytes
        target = min(max_bytes - need, int(self.low_watermark * max_bytes))
        evicted: list[str] = []
        freed = 0
        for q in sorted(listing.quarantined, key=lambda e: e.mtime_ns):
            if total <= target:
                break
            with contextlib.suppress(OSError):
                os.unlink(q.path)
                total -= q.size
        blocks = listing.blocks
        if total > target:
            parent_of = {h: self._parent(h, e) for h, e in blocks.items()}
            children = dict.fromkeys(listing.inflight_parents, 1)  # never leaves this round
            for p in parent_of.values():
                if p is not None and p in blocks:
                    children[p] = children.get(p, 0) + 1
            heap = [(e.mtime_ns, h) for h, e in blocks.items() if h not in children]
            heapq.heapify(heap)
            visited: set[str] = set()
            while total > target and heap:
                _, h = heapq.heappop(heap)
                if h in visited:
                    continue
                visited.add(h)
                entry = blocks[h]
                outcome = _delete_if_idle(entry)
                if outcome is None:
                    continue  # being read or used since listed: not a victim now
                total -= entry.size
                if outcome:
                    evicted.append(h)
                    freed += entry.size
                    if on_evict is not None:
                        on_evict(h)
                p = parent_of.get(h)
                if p is not None and p in children:
                    children[p] -= 1
                    if children[p] == 0 and p in blocks:
                        heapq.heappush(heap, (blocks[p].mtime_ns, p))
        # Keep parent links of blocks that still exist only (a long run must not remember
        # every block it ever saw); links of puts in flight are added again by their writer.
        gone = set(evicted)
        self._parents = {h: p for h, p in self._parents.items() if h in blocks and h not in gone}
        return EvictionRound(len(evicted), freed, tuple(evicted), max(total, 0))


@dataclass(frozen=True)
class Reservation:
    reserved: bool  # False: no room even after eviction, the put is dropped
    evicted_blocks: int = 0
    evicted_bytes: int = 0


class Capacity:
    """One store instance's side of the root's capacity: the shared ledger, the cap, the
    evictor. `max_bytes=None` still keeps the ledger (other processes may have a cap, and
    the byte total is a metric)."""

    def __init__(self, root: Path, max_bytes: int | None, low_watermark: float = 0.9) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.ledger = SizeLedger(root)
        self.evictor = Evictor(root, low_watermark)
        self._warned = False
        with self.ledger.locked() as view:
            if view.get() is None:  # first open of this root (or a lost ledger)
                view.set(list_root(root).total_bytes)

    def stored_bytes(self) -> int:
        return self.ledger.read() or 0

    def remember_parent(self, block_hash: str, parent: str | None) -> None:
        self.evictor.remember_parent(block_hash, parent)

    def reserve(self, need: int, tmp: str, *,
                on_evict: Callable[[str], None] | None = None) -> Reservation:
        """Count `need` bytes for the block being written at `tmp` (which exists), evicting
        first past the cap."""
        with self.ledger.locked() as view:
            total = view.get()
            if total is None:
                total = list_root(self.root, exclude=tmp).total_bytes
            if self.max_bytes is None or total + need <= self.max_bytes:
                view.set(total + need)
                return Reservation(True)
            done = self.evictor.make_room(need, self.max_bytes, exclude=tmp, on_evict=on_evict)
            fits = done.total_bytes + need <= self.max_bytes
            view.set(done.total_bytes + (need if fits else 0))
        if not fits and not self._warned:
            self._warned = True
            logger.warning("KV store %s: no room for a %d-byte block under max_bytes=%d even "
                           "after eviction; blocks are being dropped", self.root, need,
                           self.max_bytes)
        return Reservation(fits, done.evicted_blocks, done.evicted_bytes)

    def commit(self, tmp: str, path: str) -> None:
        """Rename a written block from `tmp` onto `path`, under the root lock.

        Under the lock because an eviction's listing resets the ledger: a rename in flight
        while a directory is scanned can be seen under neither name, which left the ledger a
        block short of the disk. A block already at `path` (the same content, put by another
        writer) is replaced and its size taken off, so two puts of one block count once.
        Raises OSError with the reservation still held (the caller releases it).
        """
        with self.ledger.locked() as view:
            try:
                replaced = os.stat(path).st_size
            except FileNotFoundError:
                replaced = 0
            os.replace(tmp, path)
            if replaced:
                view.set((view.get() or 0) - replaced)

    def release(self, nbytes: int) -> None:
        """Give back a reservation whose block was never written."""
        with self.ledger.locked() as view:
            view.set((view.get() or 0) - nbytes)

    def close(self) -> None:
        self.ledger.close()


def _delete_if_idle(entry: _Entry) -> bool | None:
    """Delete a block no one is reading and no one used since it was listed.

    True: deleted; False: already gone; None: kept (being read, touched, or replaced).
    """
    try:
        fd = os.open(entry.path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None
        st = os.fstat(fd)
        if st.st_mtime_ns != entry.mtime_ns or os.stat(entry.path).st_ino != st.st_ino:
            return None
        os.unlink(entry.path)
        return True
    except FileNotFoundError:
        return False
    except OSError:
        return None
    finally:
        os.close(fd)
