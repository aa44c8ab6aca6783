"""The on-disk format of one stored Full Block (one file per block).

::

    offset 0   fixed header, little-endian: magic b"DPKVBLK\\0" | uint32 format version
               | uint32 payload offset | uint32 num_layers | uint32 block_tokens
               | uint32 bytes_per_token_per_layer | uint32 checksum algorithm (1 = CRC-32)
               | uint32 key length | key (the block hash, ASCII)
               | (version 2) uint32 parent length | parent (the previous block's hash; empty
                 for a prompt's first block or when the writer did not say)
               | num_layers x uint32 CRC-32 of each Layer Block | uint32 CRC-32 of all the above
               zero padding up to the payload offset (a multiple of 4096)
    payload    the Full Block bytes `[num_layers, block_tokens, bytes_per_token_per_layer]`

Version 2 adds the parent link, so the store can tell the leaves of the prefix trie (blocks
no other stored block continues) from inner blocks when it evicts. Version 1 files (no
parent) are still read; for eviction they are blocks with an unknown parent. The payload
offset leaves room for the longest key and parent, so it does not depend on the parent and
equals version 1's for any realistic layer count.

Nothing in it depends on the model beyond the geometry, so any process that knows the
geometry can read it. Layer l is the contiguous range `payload offset + l * layer_block_bytes`,
so `get_layer` reads one range and verifies it with its own checksum. The payload starts
page-aligned so full-block and layer reads are page-aligned too. The key is stored so that a
file copied or renamed to the wrong name is caught.
"""

from __future__ import annotations

import struct
import threading
import zlib
from collections import OrderedDict
from collections.abc import Callable

import numpy as np

from dualpath.core.errors import CorruptBlockError
from dualpath.kv.layout import BlockGeometry


def _pick_crc32() -> Callable[..., int]:
    """ISA-L's CRC-32 when installed: the same values as zlib.crc32 (files are interchangeable)
    but PCLMUL-accelerated, tens of GB/s instead of ~1-4 GB/s, which is what keeps checksum
    verification off the critical path of a disk-speed read."""
    try:
        from isal import isal_zlib
    except ImportError:
        return zlib.crc32
    return isal_zlib.crc32


crc32: Callable[..., int] = _pick_crc32()

MAGIC = b"DPKVBLK\0"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
CHECKSUM_CRC32 = 1
MAX_KEY_CHARS = 128
PAGE_BYTES = 4096  # payload alignment: the usual page / SSD sector multiple
_FIXED = struct.Struct("<8sIIIIIII")


def payload_offset(geometry: BlockGeometry, key_len: int) -> int:
    """Header bytes (rounded up to a page) for a block of `geometry` under a key of `key_len`
    (room for a parent of up to MAX_KEY_CHARS included)."""
    raw = _FIXED.size + key_len + 4 + MAX_KEY_CHARS + 4 * geometry.num_layers + 4
    return -(-raw // PAGE_BYTES) * PAGE_BYTES


def layer_checksums(block: np.ndarray, geometry: BlockGeometry) -> list[int]:
    """CRC-32 of each Layer Block of a C-contiguous Full Block."""
    flat = block.data.cast("B")
    step = geometry.layer_block_bytes
    return [crc32(flat[i * step : (i + 1) * step]) for i in range(geometry.num_layers)]


def encode_header(key: str, geometry: BlockGeometry, checksums: list[int],
                  parent: str | None = None) -> bytes:
    """The header bytes (padded to the payload offset) of a block stored under `key`."""
    key_bytes = key.encode("ascii")
    parent_bytes = (parent or "").encode("ascii")
    if len(parent_bytes) > MAX_KEY_CHARS:
        raise CorruptBlockError(f"parent hash longer than {MAX_KEY_CHARS} characters")
    offset = payload_offset(geometry, len(key_bytes))
    body = _FIXED.pack(
        MAGIC,
        FORMAT_VERSION,
        offset,
        geometry.num_layers,
        geometry.block_tokens,
        geometry.bytes_per_token_per_layer,
        CHECKSUM_CRC32,
        len(key_bytes),
    )
    body += key_bytes + struct.pack("<I", len(parent_bytes)) + parent_bytes
    body += struct.pack(f"<{len(checksums)}I", *checksums)
    body += struct.pack("<I", crc32(body))
    return body + bytes(offset - len(body))


def _parent_span(mv: memoryview, version: int, key_len: int) -> tuple[int, int]:
    """(start, length) of the parent field, or (end of key, 0) for version 1."""
    at = _FIXED.size + key_len
    if version == 1:
        return at, 0
    if at + 4 > len(mv):
        raise CorruptBlockError("truncated header")
    (n,) = struct.unpack_from("<I", mv, at)
    if n > MAX_KEY_CHARS:
        raise CorruptBlockError(f"bad parent length {n}")
    return at + 4, n


def read_parent(header: bytes | bytearray | memoryview) -> str | None:
    """The parent hash recorded in a header (None: a root block, a version 1 file, or a header
    that does not parse). Used by eviction, which only needs the trie's shape."""
    mv = memoryview(header)
    try:
        magic, version, _, _, _, _, _, key_len = _FIXED.unpack_from(mv, 0)
        if magic != MAGIC or version not in READABLE_VERSIONS or key_len > MAX_KEY_CHARS:
            return None
        start, n = _parent_span(mv, version, key_len)
        text = bytes(mv[start : start + n]).decode("ascii")
    except (struct.error, CorruptBlockError, UnicodeDecodeError):
        return None
    return text or None


def decode_header(header: bytes | bytearray | memoryview, key: str, geometry: BlockGeometry) -> list[int]:
    """Verify a header read from a file stored under `key`; return its per-layer CRC-32s.

    Raises CorruptBlockError (with a short reason) on a bad magic, version, header checksum,
    key or geometry. `header` must hold at least the expected payload offset's bytes.
    """
    mv = memoryview(header)
    if len(mv) < _FIXED.size:
        raise CorruptBlockError("truncated header")
    magic, version, offset, layers, tokens, bptpl, algo, key_len = _FIXED.unpack_from(mv, 0)
    if magic != MAGIC:
        raise CorruptBlockError(f"bad magic {bytes(magic)!r}")
    if version not in READABLE_VERSIONS:
        raise CorruptBlockError(f"unsupported format version {version}")
    if key_len > MAX_KEY_CHARS:
        raise CorruptBlockError(f"bad key length {key_len}")
    parent_start, parent_len = _parent_span(mv, version, key_len)
    crcs_at = parent_start + parent_len
    crc_end = crcs_at + 4 * layers
    if crc_end + 4 <= len(mv):
        (stored_crc,) = struct.unpack_from("<I", mv, crc_end)
        if crc32(mv[:crc_end]) != stored_crc:
            raise CorruptBlockError("header checksum mismatch")
    file_geometry = (layers, tokens, bptpl)
    want = (geometry.num_layers, geometry.block_tokens, geometry.bytes_per_token_per_layer)
    if file_geometry != want:
        raise CorruptBlockError(f"wrong geometry {file_geometry}, store has {want}")
    if crc_end + 4 > len(mv):
        raise CorruptBlockError("header longer than expected")
    if algo != CHECKSUM_CRC32:
        raise CorruptBlockError(f"unknown checksum algorithm {algo}")
    if bytes(mv[_FIXED.size : _FIXED.size + key_len]) != key.encode("ascii"):
        raise CorruptBlockError("stored key does not match the file name")
    if offset != payload_offset(geometry, key_len):
        raise CorruptBlockError(f"bad payload offset {offset}")
    return list(struct.unpack_from(f"<{layers}I", mv, crcs_at))


def expected_file_bytes(geometry: BlockGeometry, key_len: int) -> int:
    return payload_offset(geometry, key_len) + geometry.full_block_bytes


class ChecksumCache:
    """Verified per-layer CRC-32s of recently read blocks, bounded LRU, thread-safe.

    Lets `get_layer` skip re-reading a header when a layerwise loader walks the layers of a
    block one by one. Safe across writers because blocks are content-addressed: any complete
    file under one hash has the same payload, hence the same checksums (a file that does not
    match them is corrupt, whoever wrote it).
    """

    def __init__(self, max_blocks: int) -> None:
        self.max_blocks = max_blocks
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, list[int]] = OrderedDict()

    def get(self, key: str) -> list[int] | None:
        with self._lock:
            crcs = self._entries.get(key)
            if crcs is not None:
                self._entries.move_to_end(key)
            return crcs

    def put(self, key: str, crcs: list[int]) -> None:
        if self.max_blocks <= 0:
            return
        with self._lock:
            self._entries[key] = crcs
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_blocks:
                self._entries.popitem(last=False)

    def discard(self, key: str) -> None:
        with self._lock:
            self._entries.pop(key, None)
