"""`FileKVStore`: Full Blocks as files under one directory, local or on a shared file system.

Layout: `root/dualpath-kvstore.json` (format + geometry, written once) and one file per
block at `root/<first 2 hex chars of hash>/<hash>.kvb` (format in `block_file`). Only plain
POSIX calls are used (open, pread, write, rename, stat, listdir), so the same code runs on
a local disk or on a distributed FS mount (3FS, CephFS, Lustre, NFS) shared by every
engine of every node; restarting is reopening.

Writes are atomic: the block goes to a unique hidden temp file in the target directory, is
optionally fsync'ed, then `os.replace`d onto its name, so a reader sees a whole file or no
file, and several processes putting the same block at once just replace one complete file
with an identical one. Without fsync a crash can leave a torn file under the final name;
checksums catch that on read.

Reads verify everything they return: the header (magic, version, header CRC, geometry,
key) and the CRC-32 of each Layer Block read. A block that fails is logged (hash, path,
reason), counted in `stats().corrupt_blocks`, returned as a miss, and moved aside to
`root/.quarantine/` so it is never read again and the next `put` of that hash rewrites it
(deleting would lose the evidence; leaving it would make `put` skip it forever). A missing
file is a plain miss. Any other OSError becomes a StoreError.

Speed (what `dualpath bench store` measures against plain sequential file I/O):
- `get` reads header and payload in one request, with O_DIRECT straight into a page-aligned
  buffer (`BlockGeometry.empty_full_block`), so the data is copied once (device -> buffer)
  and the page cache is neither used nor polluted; other buffers or file systems without
  O_DIRECT fall back to buffered reads.
- `get_many` / `put_many` keep `io_threads` blocks in flight (preadv, writev, fsync and
  the CRC release the GIL): one file per block only reaches a device's or a network FS's
  streaming bandwidth with several requests outstanding.
- CRC-32 comes from ISA-L when installed (tens of GB/s), and the verified per-layer CRCs of
  recent blocks are cached, so layer-by-layer `get_layer` reads touch only layer bytes.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from dualpath.core.errors import CorruptBlockError, StoreError
from dualpath.kv import block_file, block_io
from dualpath.kv.layout import (
    BlockGeometry,
    aligned_empty,
    check_full_block,
    check_layer_block,
    check_layer_index,
)
from dualpath.kv.prefix_index import PrefixIndex
from dualpath.kv.store import KVStore, StatsCounter, StoreStats
from dualpath.kv.store_meta import check_store_meta

logger = logging.getLogger(__name__)

SUFFIX = ".kvb"
QUARANTINE_DIR = ".quarantine"
_HASH_RE = re.compile(r"[0-9a-f]{4,128}")
_CHECKSUM_CACHE_BLOCKS = 8192  # one list of num_layers ints each: ~10 MB at 30 layers
_STALE_TEMP_S = 3600.0  # a temp file this old belongs to a writer that died


class FileKVStore(KVStore):
    """A KVStore of one file per Full Block under `root`; see the module docstring."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        geometry: BlockGeometry,
        *,
        fsync: bool = False,
        io_threads: int = 8,
        direct_io: bool = True,
    ) -> None:
        """Open (creating if needed) the store at `root`.

        fsync: each put fsyncs its file before the rename (durable once put returns).
        io_threads: blocks `get_many`/`put_many` keep in flight at once; several concurrent
        requests are what lets a disk or a network FS reach its streaming bandwidth on
        one-file-per-block I/O (1 = strictly one at a time).
        direct_io: `get` reads with O_DIRECT (straight from the device into the caller's
        buffer, no page-cache copy, no cache pollution, like 3FS's no-DRAM-cache reads) when
        the buffer is page-aligned (`BlockGeometry.empty_full_block`) and the FS supports
        it; otherwise buffered reads.
        """
        if io_threads < 1:
            raise StoreError(f"io_threads must be >= 1, got {io_threads}")
        self.root = Path(root)
        self._root_str = os.fspath(self.root)
        self.geometry = geometry
        self.fsync = fsync
        self.io_threads = io_threads
        self.direct_io = direct_io
        self._checksums = block_file.ChecksumCache(_CHECKSUM_CACHE_BLOCKS)
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._stats = StatsCounter()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            check_store_meta(self.root, self.geometry)
            self.index = PrefixIndex(self._scan())
        except OSError as exc:
            raise StoreError(f"cannot open KV store at {self.root}: {exc}") from exc

    # -- queries (no block data read) -------------------------------------------------------

    def contains_many(self, hashes: Sequence[str]) -> list[bool]:
        known = self.index.contains_many(hashes)
        return [k or self._exists(h) for h, k in zip(hashes, known, strict=True)]

    def longest_prefix(self, hashes: Sequence[str]) -> int:
        """Trust the index for the leading blocks, then extend with `os.stat` per block.

        Blocks found this way (written by other processes since open) join the index.
        """
        n = self.index.longest_prefix(hashes)
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
            # Header and payload in one request: one round trip to the disk / server.
            bufs = [header.data.cast("B"), out.data.cast("B")]
            got = block_io.read_into(fd, bufs, 0, retry_short=not direct)
            if got < offset:
                raise CorruptBlockError(f"truncated file: {got} bytes, shorter than the header")
            checksums = self._check_header(fd, header.data, block_hash)
            if got < offset + g.full_block_bytes:
                self._reread_buffered(block_hash, bufs, 0)
            flat, step = bufs[1], g.layer_block_bytes
            for layer, crc in enumerate(checksums):
                if block_file.crc32(flat[layer * step : (layer + 1) * step]) != crc:
                    raise CorruptBlockError(f"checksum mismatch in layer {layer}")
        except CorruptBlockError as exc:
            self._corrupt(block_hash, fd, str(exc))
            self._stats.add(gets=1)
            return None
        except OSError as exc:
            raise StoreError(f"reading KV block {block_hash} at {self._path(block_hash)}: {exc}") from exc
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
            if not direct:  # no readahead beyond the asked ranges; ask for both before waiting
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
                if checksums is None:
                    os.posix_fadvise(fd, 0, offset, os.POSIX_FADV_WILLNEED)
                os.posix_fadvise(fd, start, g.layer_block_bytes, os.POSIX_FADV_WILLNEED)
            if checksums is None:  # first layer read of this block: read and verify its header
                header = aligned_empty((offset,))
                if block_io.read_into(fd, [header.data], 0, retry_short=not direct) < offset:
                    raise CorruptBlockError("truncated file: shorter than the header")
                checksums = self._check_header(fd, header.data, block_hash)
            else:
                self._check_size(fd, offset)
            flat = out.data.cast("B")
            if block_io.read_into(fd, [flat], start, retry_short=not direct) < len(flat):
                self._reread_buffered(block_hash, [flat], start)
            if block_file.crc32(flat) != checksums[layer]:
                raise CorruptBlockError(f"checksum mismatch in layer {layer}")
        except CorruptBlockError as exc:
            self._corrupt(block_hash, fd, str(exc))
            self._stats.add(layer_gets=1)
            return None
        except OSError as exc:
            raise StoreError(f"reading KV block {block_hash} at {self._path(block_hash)}: {exc}") from exc
        finally:
            os.close(fd)
        self._stats.add(layer_gets=1, layer_hits=1, bytes_read=g.layer_block_bytes)
        return out

    # -- writes ----------------------------------------------------------------------------

    def put(self, block_hash: str, block: np.ndarray) -> None:
        _check_hash(block_hash)
        check_full_block(block, self.geometry)
        path = self._path(block_hash)
        if self._exists(block_hash):
            self.index.add(block_hash)
            self._stats.add(puts=1, puts_skipped=1)
            return
        header = block_file.encode_header(
            block_hash, self.geometry, block_file.layer_checksums(block, self.geometry)
        )
        parent = os.path.dirname(path)
        tmp = f"{parent}/.{block_hash}.{os.getpid()}.{threading.get_ident()}.{secrets.token_hex(4)}.tmp"
        try:
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileNotFoundError:
                os.makedirs(parent, exist_ok=True)
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                block_io.write_all(fd, [header, block.data.cast("B")])
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except OSError as exc:
            block_io.unlink_quietly(tmp)
            raise StoreError(f"writing KV block {block_hash} to {path}: {exc}") from exc
        self.index.add(block_hash)
        self._stats.add(puts=1, bytes_written=len(header) + block.nbytes)

    def stats(self) -> StoreStats:
        return self._stats.snapshot()

    # -- batches: several requests in flight (preadv, write, fsync and crc32 release the GIL) --

    def get_many(
        self, hashes: Sequence[str], outs: Sequence[np.ndarray | None] | None = None
    ) -> list[np.ndarray | None]:
        targets = list(outs) if outs is not None else [None] * len(hashes)
        if len(targets) != len(hashes):
            raise StoreError(f"get_many: {len(hashes)} hashes but {len(targets)} output buffers")
        if self.io_threads == 1 or len(hashes) <= 1:
            return [self.get(h, out=o) for h, o in zip(hashes, targets, strict=True)]
        return list(self._executor().map(self.get, hashes, targets))

    def get_layer_many(
        self, hashes: Sequence[str], layer: int, outs: Sequence[np.ndarray | None] | None = None
    ) -> list[np.ndarray | None]:
        targets = list(outs) if outs is not None else [None] * len(hashes)
        if len(targets) != len(hashes):
            raise StoreError(f"get_layer_many: {len(hashes)} hashes but {len(targets)} output buffers")
        if self.io_threads == 1 or len(hashes) <= 1:
            return [self.get_layer(h, layer, out=o) for h, o in zip(hashes, targets, strict=True)]
        return list(self._executor().map(lambda h, o: self.get_layer(h, layer, out=o), hashes, targets))

    def put_many(self, items: Sequence[tuple[str, np.ndarray]]) -> None:
        if self.io_threads == 1 or len(items) <= 1:
            for h, block in items:
                self.put(h, block)
            return
        list(self._executor().map(lambda item: self.put(*item), items))

    def close(self) -> None:
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.io_threads, thread_name_prefix="kvstore-io")
            return self._pool

    # -- internals -------------------------------------------------------------------------

    def _path(self, block_hash: str) -> str:
        # A plain string: pathlib would cost more than the syscall on small layer reads.
        return f"{self._root_str}/{block_hash[:2]}/{block_hash}{SUFFIX}"

    def _exists(self, block_hash: str) -> bool:
        _check_hash(block_hash)
        try:
            os.stat(self._path(block_hash))
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise StoreError(f"stat of KV block {block_hash}: {exc}") from exc
        return True

    def _open_for_read(self, block_hash: str, direct: bool) -> tuple[int, bool] | None:
        """(fd, O_DIRECT on?) of a stored block, or None if there is no such file."""
        _check_hash(block_hash)
        try:
            return block_io.open_for_read(self._path(block_hash), direct)
        except FileNotFoundError:
            self.index.discard(block_hash)
            return None
        except OSError as exc:
            raise StoreError(f"opening KV block {block_hash}: {exc}") from exc

    def _check_header(self, fd: int, header: memoryview, block_hash: str) -> list[int]:
        """Verify the header and the file size; return the per-layer CRCs."""
        checksums = block_file.decode_header(header, block_hash, self.geometry)
        self._check_size(fd, len(header))
        self._checksums.put(block_hash, checksums)
        return checksums

    def _reread_buffered(self, block_hash: str, bufs: list[memoryview], offset: int) -> None:
        """Finish a read cut short although the file has the right size (an O_DIRECT quirk)."""
        with open(self._path(block_hash), "rb", buffering=0) as f:
            if block_io.read_into(f.fileno(), bufs, offset) < sum(len(b) for b in bufs):
                raise CorruptBlockError("truncated file: short read")

    def _check_size(self, fd: int, payload_offset: int) -> None:
        size = os.fstat(fd).st_size
        expected = payload_offset + self.geometry.full_block_bytes
        if size != expected:
            kind = "truncated" if size < expected else "oversized"
            raise CorruptBlockError(f"{kind} file: {size} bytes, expected {expected}")

    def _corrupt(self, block_hash: str, fd: int, reason: str) -> None:
        path = self._path(block_hash)
        self.index.discard(block_hash)
        self._checksums.discard(block_hash)
        moved = self._quarantine(block_hash, fd, reason)
        where = f"moved to {moved}" if moved else "left in place (already replaced or moved)"
        logger.warning("corrupt KV block %s at %s: %s; treated as a miss, %s", block_hash, path, reason, where)
        self._stats.add(corrupt_blocks=1, quarantined_blocks=1 if moved else 0)

    def _quarantine(self, block_hash: str, fd: int, reason: str) -> Path | None:
        """Move the bad file aside, unless another writer already replaced it with a new one."""
        path = self._path(block_hash)
        try:
            if os.stat(path).st_ino != os.fstat(fd).st_ino:
                return None
            qdir = self.root / QUARANTINE_DIR
            qdir.mkdir(exist_ok=True)
            slug = re.sub(r"[^a-z0-9]+", "-", reason.lower()).strip("-")[:40]
            target = qdir / f"{block_hash}.{os.getpid()}.{time.time_ns()}.{slug}{SUFFIX}"
            os.replace(path, target)
        except OSError:
            return None
        return target

    def _scan(self) -> list[str]:
        """Names of stored blocks (directory listings only), sweeping stale temp files."""
        found: list[str] = []
        now = time.time()
        with os.scandir(self.root) as top:
            subdirs = [e.path for e in top if len(e.name) == 2 and e.is_dir()]
        for sub in subdirs:
            with os.scandir(sub) as entries:
                for e in entries:
                    name = e.name
                    if name.endswith(SUFFIX) and not name.startswith("."):
                        found.append(name[: -len(SUFFIX)])
                    elif name.endswith(".tmp") and name.startswith("."):
                        block_io.sweep_if_stale(e.path, now, _STALE_TEMP_S)
        return found


def _check_hash(block_hash: str) -> None:
    if not isinstance(block_hash, str) or not _HASH_RE.fullmatch(block_hash):
        raise StoreError(f"block hash must be 4-128 lowercase hex chars, got {block_hash!r}")
