"""FileKVStore: corruption is a logged, counted miss; restarts; geometry; the file format."""

from __future__ import annotations

import logging
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from kv_helpers import SMALL, hex_hash, random_block

from dualpath.core.errors import StoreError
from dualpath.kv import BlockGeometry, FileKVStore, block_io
from dualpath.kv.block_file import PAGE_BYTES, payload_offset

LOGGER = "dualpath.kv.file_store"


# SMALL is not page-sized, so it is read with buffered I/O; ALIGNED (4 KiB Layer Blocks) is
# read with O_DIRECT where the file system supports it. Every read test runs on both.
ALIGNED = BlockGeometry(num_layers=3, block_tokens=4, bytes_per_token_per_layer=1024)


@pytest.fixture(params=[SMALL, ALIGNED], ids=["buffered", "direct"])
def store(tmp_path: Path, request: pytest.FixtureRequest) -> FileKVStore:
    return FileKVStore(tmp_path / "store", request.param)


def _file(store: FileKVStore, h: str) -> Path:
    return Path(store.path_of(h))


def _flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


def _assert_corrupt_miss(store: FileKVStore, h: str, caplog: pytest.LogCaptureFixture, reason: str,
                         *, layer: int | None = None) -> None:
    path = _file(store, h)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        got = store.get(h) if layer is None else store.get_layer(h, layer)
    assert got is None
    lines = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert len(lines) == 1
    assert h in lines[0] and str(path) in lines[0] and reason in lines[0]
    s = store.stats()
    assert s.corrupt_blocks == 1 and s.quarantined_blocks == 1
    assert not path.exists()  # moved aside, never read again
    assert len(list((store.dir / ".quarantine").iterdir())) == 1
    assert store.longest_prefix([h]) == 0


def test_payload_is_page_aligned_in_full_block_layout(store: FileKVStore) -> None:
    h = hex_hash(1)
    b = random_block(1, store.geometry)
    store.put(h, b)
    raw = _file(store, h).read_bytes()
    off = payload_offset(store.geometry, len(h))
    assert off % PAGE_BYTES == 0
    assert len(raw) == off + store.geometry.full_block_bytes
    assert raw[off:] == b.tobytes()
    assert raw[:8] == b"DPKVBLK\0"
    # Per-layer checksums are plain CRC-32 (zlib's), whichever implementation computed them.
    # (after the key comes the parent field: its length, 0 here, and no characters)
    assert struct.unpack_from("<I", raw, 36 + len(h)) == (0,)
    stored = struct.unpack_from(f"<{store.geometry.num_layers}I", raw, 36 + len(h) + 4)
    step = store.geometry.layer_block_bytes
    assert list(stored) == [zlib.crc32(b.tobytes()[i * step : (i + 1) * step]) for i in range(store.geometry.num_layers)]


def test_page_sized_blocks_are_read_with_o_direct(tmp_path: Path) -> None:
    if block_io.O_DIRECT == 0:
        pytest.skip("no O_DIRECT on this platform")
    aligned = FileKVStore(tmp_path / "a", ALIGNED)
    aligned.put(hex_hash(1), random_block(1, ALIGNED))
    got = aligned.get(hex_hash(1))
    assert got is not None and np.array_equal(got, random_block(1, ALIGNED))
    unaligned_out = np.empty(ALIGNED.full_block_bytes + 1, np.uint8)[1:].reshape(ALIGNED.full_block_shape)
    assert aligned.get(hex_hash(1), out=unaligned_out) is unaligned_out  # falls back to buffered
    assert np.array_equal(unaligned_out, random_block(1, ALIGNED))
    assert aligned.stats().direct_reads == 1  # (if /tmp had no O_DIRECT this would be 0)
    buffered = FileKVStore(tmp_path / "b", ALIGNED, direct_io=False)
    buffered.put(hex_hash(1), random_block(1, ALIGNED))
    assert buffered.get(hex_hash(1)) is not None and buffered.stats().direct_reads == 0


def test_corrupt_payload_is_a_miss(store: FileKVStore, caplog: pytest.LogCaptureFixture) -> None:
    h = hex_hash(1)
    store.put(h, random_block(1, store.geometry))
    _flip_byte(_file(store, h), payload_offset(store.geometry, len(h)) + store.geometry.layer_block_bytes + 5)
    _assert_corrupt_miss(store, h, caplog, "checksum mismatch in layer 1")


def test_corrupt_layer_is_a_miss_for_get_layer(store: FileKVStore, caplog: pytest.LogCaptureFixture) -> None:
    h = hex_hash(1)
    b = random_block(1, store.geometry)
    store.put(h, b)
    _flip_byte(_file(store, h), payload_offset(store.geometry, len(h)) + 2 * store.geometry.layer_block_bytes)
    layer0 = store.get_layer(h, 0)  # an intact layer verifies on its own
    assert layer0 is not None and np.array_equal(layer0[0], b[0])
    _assert_corrupt_miss(store, h, caplog, "checksum mismatch in layer 2", layer=2)


@pytest.mark.parametrize(("offset", "reason"), [(0, "bad magic"), (20, "header checksum mismatch"),
                                                (40, "header checksum mismatch")])
def test_corrupt_header_is_a_miss(store: FileKVStore, caplog: pytest.LogCaptureFixture,
                                  offset: int, reason: str) -> None:
    h = hex_hash(1)
    store.put(h, random_block(1, store.geometry))
    _flip_byte(_file(store, h), offset)
    _assert_corrupt_miss(store, h, caplog, reason)


@pytest.mark.parametrize("keep_bytes", [10, PAGE_BYTES + 7, -1])
def test_truncated_file_is_a_miss(store: FileKVStore, caplog: pytest.LogCaptureFixture, keep_bytes: int) -> None:
    h = hex_hash(1)
    store.put(h, random_block(1, store.geometry))
    path = _file(store, h)
    os.truncate(path, keep_bytes if keep_bytes > 0 else path.stat().st_size - 1)
    _assert_corrupt_miss(store, h, caplog, "truncated file")


def test_truncated_file_is_a_miss_for_get_layer(store: FileKVStore, caplog: pytest.LogCaptureFixture) -> None:
    h = hex_hash(1)
    store.put(h, random_block(1, store.geometry))
    path = _file(store, h)
    os.truncate(path, path.stat().st_size - 1)
    _assert_corrupt_miss(store, h, caplog, "expected", layer=0)


def test_block_of_another_geometry_is_a_miss(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    other = BlockGeometry(SMALL.num_layers, SMALL.block_tokens * 2, SMALL.bytes_per_token_per_layer)
    h = hex_hash(1)
    other_store = FileKVStore(tmp_path / "other", other)
    other_store.put(h, random_block(1, other))
    store = FileKVStore(tmp_path / "store", SMALL)
    os.replace(other_store.path_of(h), _file(store, h))
    _assert_corrupt_miss(store, h, caplog, "wrong geometry")


def test_file_under_wrong_name_is_a_miss(store: FileKVStore, caplog: pytest.LogCaptureFixture) -> None:
    a, b = hex_hash(1), hex_hash(2)
    store.put(a, random_block(1, store.geometry))
    _file(store, b).parent.mkdir(parents=True, exist_ok=True)
    os.link(_file(store, a), _file(store, b))
    _assert_corrupt_miss(store, b, caplog, "stored key does not match")


def test_missing_file_is_a_plain_miss(store: FileKVStore, caplog: pytest.LogCaptureFixture) -> None:
    h = hex_hash(1)
    store.put(h, random_block(1, store.geometry))
    assert store.longest_prefix([h]) == 1
    os.unlink(_file(store, h))  # e.g. another process evicted it
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert store.get(h) is None
    assert not caplog.records
    s = store.stats()
    assert (s.get_misses, s.corrupt_blocks) == (1, 0)
    assert store.longest_prefix([h]) == 0  # the miss removed it from the index


def test_put_after_quarantine_rewrites_block(store: FileKVStore) -> None:
    h = hex_hash(1)
    b = random_block(1, store.geometry)
    store.put(h, b)
    _flip_byte(_file(store, h), payload_offset(store.geometry, len(h)))
    assert store.get(h) is None
    store.put(h, b)
    got = store.get(h)
    assert got is not None and np.array_equal(got, b)


def test_survives_reopening(tmp_path: Path) -> None:
    root = tmp_path / "store"
    blocks = {hex_hash(i): random_block(i) for i in range(4)}
    first = FileKVStore(root, SMALL)
    for h, b in blocks.items():
        first.put(h, b)
    del first
    reopened = FileKVStore(root, SMALL)
    assert len(reopened.index) == 4  # rebuilt from file names alone
    assert reopened.longest_prefix(list(blocks)) == 4
    for h, b in blocks.items():
        got = reopened.get(h)
        assert got is not None and np.array_equal(got, b)


def test_tampered_geometry_metadata_is_refused(tmp_path: Path) -> None:
    store = FileKVStore(tmp_path / "store", SMALL)
    meta = store.dir / "dualpath-kvstore.json"
    meta.write_text(meta.read_text().replace('"num_layers": 3', '"num_layers": 4'))
    with pytest.raises(StoreError, match="changed by hand"):
        FileKVStore(tmp_path / "store", SMALL)


def test_bad_hash_rejected(store: FileKVStore) -> None:
    with pytest.raises(StoreError, match="hex"):
        store.put("../../etc/passwd", random_block(1, store.geometry))
    with pytest.raises(StoreError, match="hex"):
        store.get("ZZZZ")


def test_temp_files_are_invisible_and_stale_ones_swept(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = FileKVStore(root, SMALL)
    store.put(hex_hash(1), random_block(1))
    sub = store.dir / hex_hash(1)[:2]
    fresh, stale = sub / ".fresh.1.2.ab.tmp", sub / ".stale.1.2.cd.tmp"
    fresh.write_bytes(b"partial")
    stale.write_bytes(b"partial")
    os.utime(stale, (1, 1))
    reopened = FileKVStore(root, SMALL)
    assert len(reopened.index) == 1
    assert fresh.exists() and not stale.exists()


def test_unreadable_store_raises_store_error(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with pytest.raises(StoreError, match="cannot open"):
        FileKVStore(not_a_dir / "store", SMALL)
