"""A stored Full Block as one byte string: the block file's bytes, for stores that hold values.

A networked store keeps exactly what `FileKVStore` writes to a file (`block_file`): the
header (magic, version, geometry, key, one CRC-32 per Layer Block, header CRC) padded to
the payload offset, then the Full Block. So a value can be checked with the same code, a
`.kvb` file can be loaded into a server as is, and Layer Block l is the byte range
`payload_offset + l * layer_block_bytes` of the value, which a server can return alone.

Everything here is pure (bytes in, arrays or CorruptBlockError out). Whatever a value holds,
the functions either fill the caller's buffer with verified bytes or raise
CorruptBlockError; nothing else escapes.
"""

from __future__ import annotations

import struct

import numpy as np

from dualpath.core.errors import CorruptBlockError
from dualpath.kv import block_file
from dualpath.kv.layout import BlockGeometry

Buffer = bytes | bytearray | memoryview


def value_bytes(geometry: BlockGeometry, key: str) -> int:
    """Length of a well-formed value stored under `key`."""
    return block_file.payload_offset(geometry, len(key)) + geometry.full_block_bytes


def encode_value(key: str, geometry: BlockGeometry, block: np.ndarray) -> bytearray:
    """Header + payload of a (shape-checked, C-contiguous) Full Block, in one buffer."""
    header = block_file.encode_header(key, geometry, block_file.layer_checksums(block, geometry))
    value = bytearray(len(header) + block.nbytes)
    value[: len(header)] = header
    np.copyto(np.frombuffer(value, np.uint8, block.nbytes, len(header)), block.reshape(-1))
    return value


def check_header(header: Buffer, key: str, geometry: BlockGeometry) -> list[int]:
    """The per-layer CRC-32s of a value's header; CorruptBlockError if it is not one of ours."""
    try:
        return block_file.decode_header(header, key, geometry)
    except CorruptBlockError:
        raise
    except (struct.error, ValueError, OverflowError, TypeError) as exc:  # a hostile header
        raise CorruptBlockError(f"unreadable header: {exc}") from exc


def check_length(length: int, key: str, geometry: BlockGeometry) -> None:
    expected = value_bytes(geometry, key)
    if length != expected:
        kind = "truncated" if length < expected else "oversized"
        raise CorruptBlockError(f"{kind} value: {length} bytes, expected {expected}")


def decode_full(raw: Buffer, key: str, geometry: BlockGeometry, out: np.ndarray) -> list[int]:
    """Verify a whole value and copy its Full Block into `out`; returns the layer CRCs.

    `out` is written even when the value turns out corrupt (the caller then discards it).
    """
    mv = memoryview(raw).cast("B")
    check_length(len(mv), key, geometry)
    offset = block_file.payload_offset(geometry, len(key))
    crcs = check_header(mv[:offset], key, geometry)
    flat = out.reshape(-1)
    np.copyto(flat, np.frombuffer(mv, np.uint8, geometry.full_block_bytes, offset))
    view = flat.data.cast("B")
    step = geometry.layer_block_bytes
    for layer, crc in enumerate(crcs):
        if block_file.crc32(view[layer * step : (layer + 1) * step]) != crc:
            raise CorruptBlockError(f"checksum mismatch in layer {layer}")
    return crcs


def decode_layer(raw_layer: Buffer, crcs: list[int], layer: int, geometry: BlockGeometry,
                 out: np.ndarray) -> None:
    """Verify one Layer Block's bytes (a value's range) against its CRC; copy into `out`."""
    mv = memoryview(raw_layer).cast("B")
    if len(mv) != geometry.layer_block_bytes:
        raise CorruptBlockError(f"truncated value: layer {layer} has {len(mv)} bytes")
    if block_file.crc32(mv) != crcs[layer]:
        raise CorruptBlockError(f"checksum mismatch in layer {layer}")
    np.copyto(out.reshape(-1), np.frombuffer(mv, np.uint8))


def layer_range(geometry: BlockGeometry, key: str, layer: int) -> tuple[int, int]:
    """(start, length) of Layer Block `layer` inside the value stored under `key`."""
    offset = block_file.payload_offset(geometry, len(key))
    return offset + layer * geometry.layer_block_bytes, geometry.layer_block_bytes
