"""`FileKVStore`: Full Blocks as files under one root, local or on a shared file system.

Layout (`store_root`): one directory per block geometry under the root, so one root holds any
number of models and block sizes; each holds `<first 2 hex chars>/<hash>.kvb` files (format
in `block_file`), owner-only. Only plain POSIX calls are used (open, pread, write, rename,
stat, flock, listdir), so the same code runs on a local disk or on a distributed FS mount
(3FS, CephFS, Lustre, NFSv4) shared by every engine of every node; restarting is reopening.

Writes are atomic: the block goes to a unique hidden temp file in the target directory, is
optionally fsync'ed, then `os.replace`d onto its name, so a reader sees a whole file or no
file, and several processes putting the same block at once just replace one complete file
with an identical one. Without fsync a crash can leave a torn file under the final name;
checksums catch that on read.

Capacity (`max_bytes`, see `capacity`): every put reserves its size in the root's shared
ledger first; past the cap, least recently used leaf blocks of the prefix trie are evicted
(any process, any geometry), and a put that cannot make room is dropped. Reads touch the
block's mtime (recency) and hold a shared flock while reading, so eviction never deletes a
block being read; a block deleted between open and lock is a miss.

Reads verify everything they return: the header (magic, version, header CRC, geometry,
key) and the CRC-32 of each Layer Block read. A block that fails is logged (hash, path,
reason), counted in `stats().corrupt_blocks`, returned as a miss, and moved aside to the
geometry directory's `.quarantine/` (counted against the cap and evicted first). A missing
file is a plain miss. Any other OSError becomes a StoreError.

Speed (`dualpath bench store`): `get` reads header and payload in one request, with O_DIRECT
into a page-aligned buffer when it can; batches keep `io_threads` blocks in flight
(`store_batches`); CRC-32 is ISA-L's when installed; verified per-layer CRCs of recent blocks
are cached, so layer-by-layer `get_layer` reads touch only layer bytes.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import secrets
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dualpath.core.errors import CorruptBlockError, StoreError
from dualpath.kv import block_file, block_io, store_root
from dualpath.kv.capacity import STALE_TEMP_S, SUFFIX, Capacity
from dualpath.kv.layout import (
    BlockGeometry,
    aligned_empty,
    check_full_block,
    check_layer_block,
    check_layer_index,
)
from dualpath.kv.prefix_index import PrefixIndex
from dualpath.kv.store import StatsCounter, StoreStats
from dualpath.kv.store_batches import BatchedStore

logger = logging.getLogger(__name__)

META_NAME = store_root.META_NAME
QUARANTINE_DIR = store_root.QUARANTINE_DIR
_HASH_RE = re.compile(r"[0-9a-f]{4,128}")
_CHECKSUM_CACHE_BLOCKS = 8192  # one list of num_layers ints each: ~10 MB at 30 layers


class _Evicted(Exception):
    """The block was deleted between our open and our lock: a plain miss."""


class FileKVStore(BatchedStore):
    """A KVStore of one file per Full Block under `root`; see the module docstring."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        geometry: BlockGeometry,
        *,
        fsync: bool = False,
        io_threads: int = 8,
        direct_io: bool = True,
        max_bytes: int | None = None,
        low_watermark: float = 0.9,
        touch_reads: bool = True,
    ) -> None:
        """Open (creating or migrating if needed) the store at `root` for `geometry`.

        fsync: each put fsyncs its file before the rename (durable once put returns).
        io_threads: blocks `get_many`/`put_many` keep in flight at once (1 = one at a time).
        direct_io: `get` reads with O_DIRECT into page-aligned buffers where the FS allows.
        max_bytes: cap of the whole root (all geometries, all processes), None = unbounded;
        eviction frees down to `low_watermark` x max_bytes. touch_reads=False: reads leave
        recency alone (a verifier or a backup must not keep blocks alive).
        """
        if io_threads < 1:
            raise StoreError(f"io_threads must be >= 1, got {io_threads}")
        if max_bytes is not None and max_bytes < 1:
            raise StoreError(f"max_bytes must be positive, got {max_bytes}")
        if not 0.0 < low_watermark <= 1.0:
            raise StoreError(f"low_watermark must be in (0, 1], got {low_watermark}")
        super().__init__(io_threads)
        self.root = Path(root)
        self.geometry = geometry
        self.fsync = fsync
        self.direct_io = direct_io
        self.max_bytes = max_bytes
        self.touch_reads = touch_reads
        self._checksums = block_file.ChecksumCache(_CHECKSUM_CACHE_BLOCKS)
        self._stats = StatsCounter()
        try:
            self.dir = store_root.prepare(self.root, geometry)
            self._dir_str = os.fspath(self.dir)
            self.capacity = Capacity(self.root, max_bytes, low_watermark)
            # Sized for the blocks the cap can hold, with room for other geometries' share
            # of the cap (unbounded without a cap, like the store).
            bound = None if max_bytes is None else 2 * max_bytes // store_root.block_file_bytes(geometry) + 1024
            self.index = PrefixIndex(store_root.block_names(self.dir, STALE_TEMP_S), bound)
        except OSError as exc:
            raise StoreError(f"cannot open KV store at {self.root}: {exc}") from exc

    def path_of(self, block_hash: str) -> str:
        """Where the block `block_hash` is (or would be) stored."""
        # A plain string: pathlib would cost more than the syscall on small layer reads.
        return f"{self._dir_str}/{block_hash[:2]}/{block_hash}{SUFFIX}"

    def stored_bytes(self) -> int:
        """Bytes held under the root (every geometry, every process), from the ledger."""
        return self.capacity.stored_bytes()

    # -- queries (no block data read) -------------------------------------------------------

    def contains_many(self, hashes: Sequence[str]) -> list[bool]:
        return [self._exists(h) for h in hashes]

    def longest_prefix(self, hashes: Sequence[str]) -> int:
        """Trust the index for the leading blocks once its deepest claim is still on disk
        (eviction takes leaves first, so that one goes first), then extend with `os.stat`;
        blocks found this way (written by other processes since open) join the index."""
        n = self.index.longest_prefix(hashes)
        while n > 0 and not self._exists(hashes[n - 1]):
            self.index.discard(hashes[n - 1])
            n -= 1
        while n < len(hashes) and self._exists(hashes[n]):
            self.index.add(hashes[n])
            n += 1
        return n

    # -- reads -----------------------------------------------------------------------------

    def get(self, block_hash: str, out: np.ndarray | None = None) -> np.ndarray | None:
        g = self.geometry
        if out is None:
            out = g.empty_full_block()
        else:
            check_full_block(out, g, "output Full Block")
        offset = block_file.payload_offset(g, len(block_hash))
        header = aligned_empty((offset,))
        direct = self.direct_io and block_io.direct_io_possible(header, out)
        opened = self._open_for_read(block_hash, direct)
        if opened is None:
            self._stats.add(gets=1)
            return None
        fd, direct = opened
        try:
            size = self._lock_for_read(fd)
            # Header and payload in one request: one round trip to the disk / server.
            bufs = [header.data.cast("B"), out.data.cast("B")]
            got = block_io.read_into(fd, bufs, 0, retry_short=not direct)
            if got < offset:
                raise CorruptBlockError(f"truncated file: {got} bytes, shorter than the header")
            checksums = self._check_header(header.data, block_hash, size)
            if got < offset + g.full_block_bytes:
                self._reread_buffered(fd, bufs, 0)
            flat, step = bufs[1], g.layer_block_bytes
            for layer, crc in enumerate(checksums):
                if block_file.crc32(flat[layer * step : (layer + 1) * step]) != crc:
                    raise CorruptBlockError(f"checksum mismatch in layer {layer}")
            if self.touch_reads:
                _touch(fd)
        except _Evicted:
            self._evicted_under_read(block_hash)
            self._stats.add(gets=1)
            return None
        except CorruptBlockError as exc:
            self._corrupt(block_hash, fd, str(exc))
            self._stats.add(gets=1)
            return None
        except OSError as exc:
            raise self._read_error(block_hash, exc) from exc
        finally:
            os.close(fd)
        self._stats.add(gets=1, get_hits=1, bytes_read=g.full_block_bytes, direct_reads=int(direct))
        return out

    def get_layer(self, block_hash: str, layer: int, out: np.ndarray | None = None) -> np.ndarray | None:
        g = self.geometry
        check_layer_index(layer, g)
        if out is None:
            out = g.empty_layer_block()
        else:
            check_layer_block(out, g, "output Layer Block")
        offset = block_file.payload_offset(g, len(block_hash))
        start = offset + layer * g.layer_block_bytes
        checksums = self._checksums.get(block_hash)
        opened = self._open_for_read(block_hash, self.direct_io and block_io.direct_io_possible(out))
        if opened is None:
            self._stats.add(layer_gets=1)
            return None
        fd, direct = opened
        try:
            size = self._lock_for_read(fd)
            if not direct:  # no readahead beyond the asked ranges; ask for both before waiting
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
                if checksums is None:
                    os.posix_fadvise(fd, 0, offset, os.POSIX_FADV_WILLNEED)
                os.posix_fadvise(fd, start, g.layer_block_bytes, os.POSIX_FADV_WILLNEED)
            if checksums is None:  # first layer read of this block: read and verify its header
                header = aligned_empty((offset,))
                if block_io.read_into(fd, [header.data], 0, retry_short=not direct) < offset:
                    raise CorruptBlockError("truncated file: shorter than the header")
                checksums = self._check_header(header.data, block_hash, size)
            else:
                self._check_size(size, offset)
            flat = out.data.cast("B")
            if block_io.read_into(fd, [flat], start, retry_short=not direct) < len(flat):
                self._reread_buffered(fd, [flat], start)
            if block_file.crc32(flat) != checksums[layer]:
                raise CorruptBlockError(f"checksum mismatch in layer {layer}")
            if layer == 0 and self.touch_reads:  # one touch per layerwise walk of the block
                _touch(fd)
        except _Evicted:
            self._evicted_under_read(block_hash)
            self._stats.add(layer_gets=1)
            return None
        except CorruptBlockError as exc:
            self._corrupt(block_hash, fd, str(exc))
            self._stats.add(layer_gets=1)
            return None
        except OSError as exc:
            raise self._read_error(block_hash, exc) from exc
        finally:
            os.close(fd)
        self._stats.add(layer_gets=1, layer_hits=1, bytes_read=g.layer_block_bytes)
        return out

    # -- writes ----------------------------------------------------------------------------

    def put(self, block_hash: str, block: np.ndarray, parent: str | None = None) -> None:
        """Store a block (see `KVStore.put`); `parent` is the hash of the block before it in
        its prompt (None for a first block), which lets eviction keep inner blocks."""
        _check_hash(block_hash)
        if parent is not None:
            _check_hash(parent)
        check_full_block(block, self.geometry)
        path = self.path_of(block_hash)
        if self._exists(block_hash):
            self.index.add(block_hash)
            self._stats.add(puts=1, puts_skipped=1)
            return
        header = block_file.encode_header(
            block_hash, self.geometry, block_file.layer_checksums(block, self.geometry), parent)
        need = len(header) + block.nbytes
        parent_dir = os.path.dirname(path)
        # The temp name carries the parent: an eviction listing this write in flight keeps
        # the parent, which is about to stop being a leaf.
        tmp = (f"{parent_dir}/.{block_hash}.{parent or '-'}.{os.getpid()}."
               f"{threading.get_ident()}.{secrets.token_hex(4)}.tmp")
        try:
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, store_root.FILE_MODE)
            except FileNotFoundError:
                store_root.private_mkdir(Path(parent_dir))
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, store_root.FILE_MODE)
            try:
                done = self.capacity.reserve(need, tmp, on_evict=self._forget)
                if done.evicted_blocks:
                    self._stats.add(evictions=done.evicted_blocks, evicted_bytes=done.evicted_bytes)
                if not done.reserved:
                    block_io.unlink_quietly(tmp)
                    self._stats.add(puts=1, puts_dropped=1)
                    return
                try:
                    block_io.write_all(fd, [header, block.data.cast("B")])
                    if self.fsync:
                        os.fsync(fd)
                except OSError:
                    self.capacity.release(need)
                    raise
            finally:
                os.close(fd)
            try:
                self.capacity.commit(tmp, path)
            except OSError:
                self.capacity.release(need)
                raise
        except OSError as exc:
            block_io.unlink_quietly(tmp)
            raise StoreError(f"writing KV block {block_hash} to {path}: {exc}") from exc
        self.capacity.remember_parent(block_hash, parent)
        self.index.add(block_hash)
        self._stats.add(puts=1, bytes_written=need)

    def stats(self) -> StoreStats:
        return self._stats.snapshot()

    def close(self) -> None:
        super().close()
        self.capacity.close()

    def _forget(self, block_hash: str) -> None:
        self.index.discard(block_hash)
        self._checksums.discard(block_hash)

    # -- internals -------------------------------------------------------------------------

    def _exists(self, block_hash: str) -> bool:
        _check_hash(block_hash)
        try:
            os.stat(self.path_of(block_hash))
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise StoreError(f"stat of KV block {block_hash}: {exc}") from exc
        return True

    def _open_for_read(self, block_hash: str, direct: bool) -> tuple[int, bool] | None:
        """(fd, O_DIRECT on?) of a stored block, or None if there is no such file."""
        _check_hash(block_hash)
        try:
            return block_io.open_for_read(self.path_of(block_hash), direct)
        except FileNotFoundError:
            self.index.discard(block_hash)
            return None
        except OSError as exc:
            raise StoreError(f"opening KV block {block_hash}: {exc}") from exc

    def _lock_for_read(self, fd: int) -> int:
        """Hold a shared lock (eviction skips locked blocks); the file's size. Raises
        _Evicted if the block was deleted after we opened it."""
        fcntl.flock(fd, fcntl.LOCK_SH)  # released by close
        st = os.fstat(fd)
        if st.st_nlink == 0:
            raise _Evicted
        return st.st_size

    def _evicted_under_read(self, block_hash: str) -> None:
        self.index.discard(block_hash)
        self._stats.add(evicted_reads=1)

    def _read_error(self, block_hash: str, exc: OSError) -> StoreError:
        if exc.errno == errno.ESTALE:  # deleted by another NFS client while we read
            self.index.discard(block_hash)
        return StoreError(f"reading KV block {block_hash} at {self.path_of(block_hash)}: {exc}")

    def _check_header(self, header: memoryview, block_hash: str, size: int) -> list[int]:
        """Verify the header and the file size; return the per-layer CRCs."""
        checksums = block_file.decode_header(header, block_hash, self.geometry)
        self._check_size(size, len(header))
        self._checksums.put(block_hash, checksums)
        return checksums

    def _reread_buffered(self, fd: int, bufs: list[memoryview], offset: int) -> None:
        """Finish a read cut short although the file has the right size (an O_DIRECT quirk)."""
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        if flags & block_io.O_DIRECT:
            fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~block_io.O_DIRECT)
        if block_io.read_into(fd, bufs, offset) < sum(len(b) for b in bufs):
            raise CorruptBlockError("truncated file: short read")

    def _check_size(self, size: int, payload_offset: int) -> None:
        expected = payload_offset + self.geometry.full_block_bytes
        if size != expected:
            kind = "truncated" if size < expected else "oversized"
            raise CorruptBlockError(f"{kind} file: {size} bytes, expected {expected}")

    def _corrupt(self, block_hash: str, fd: int, reason: str) -> None:
        path = self.path_of(block_hash)
        self._forget(block_hash)
        with self.capacity.ledger.locked():  # a move out of a directory being listed
            moved = store_root.quarantine(self.dir, path, fd, block_hash, reason)
        where = f"moved to {moved}" if moved else "left in place (already replaced or moved)"
        logger.warning("corrupt KV block %s at %s: %s; treated as a miss, %s", block_hash, path, reason, where)
        self._stats.add(corrupt_blocks=1, quarantined_blocks=1 if moved else 0)


def _touch(fd: int) -> None:
    """Mark a block as just used (its mtime is its recency for eviction, in every process);
    best effort (e.g. a root shared with another user)."""
    with contextlib.suppress(OSError):
        os.utime(fd)


def _check_hash(block_hash: str) -> None:
    if not isinstance(block_hash, str) or not _HASH_RE.fullmatch(block_hash):
        raise StoreError(f"block hash must be 4-128 lowercase hex chars, got {block_hash!r}")
