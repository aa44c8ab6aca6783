"""One store root holds several geometries side by side; old roots migrate; files are private."""

from __future__ import annotations

import json
import os
import stat
import struct
import zlib
from pathlib import Path

import numpy as np
from kv_helpers import SMALL, hex_hash, random_block

from dualpath.kv import BlockGeometry, FileKVStore

TINY_LIKE = BlockGeometry(num_layers=2, block_tokens=4, bytes_per_token_per_layer=32)
BIGGER_BLOCKS = BlockGeometry(num_layers=3, block_tokens=8, bytes_per_token_per_layer=16)


def test_several_geometries_share_one_root(tmp_path: Path) -> None:
    """What `serve --model tiny` on a machine that once ran the default model needs."""
    root = tmp_path / "kvstore"
    stores = {g: FileKVStore(root, g) for g in (SMALL, TINY_LIKE, BIGGER_BLOCKS)}
    for i, (g, store) in enumerate(stores.items()):
        store.put(hex_hash(i), random_block(i, g))
    assert len({s.dir for s in stores.values()}) == 3
    for i, g in enumerate(stores):
        reopened = FileKVStore(root, g)
        assert reopened.longest_prefix([hex_hash(i)]) == 1
        got = reopened.get(hex_hash(i))
        assert got is not None and np.array_equal(got, random_block(i, g))
        others = [hex_hash(j) for j in range(3) if j != i]
        assert reopened.contains_many(others) == [False, False]


def _v1_block_file(path: Path, key: str, block: np.ndarray, g: BlockGeometry) -> None:
    """A block file as the format-1 store wrote it (no parent field)."""
    step = g.layer_block_bytes
    flat = block.tobytes()
    crcs = [zlib.crc32(flat[i * step:(i + 1) * step]) for i in range(g.num_layers)]
    body = struct.pack("<8sIIIIIII", b"DPKVBLK\0", 1, 4096, g.num_layers, g.block_tokens,
                       g.bytes_per_token_per_layer, 1, len(key))
    body += key.encode() + struct.pack(f"<{len(crcs)}I", *crcs)
    body += struct.pack("<I", zlib.crc32(body))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body + bytes(4096 - len(body)) + flat)


def _old_layout_root(root: Path, g: BlockGeometry, n: int) -> None:
    root.mkdir(mode=0o755)
    (root / "dualpath-kvstore.json").write_text(json.dumps(
        {"format": "dualpath-kv-file-store", "version": 1,
         "geometry": {"num_layers": g.num_layers, "block_tokens": g.block_tokens,
                      "bytes_per_token_per_layer": g.bytes_per_token_per_layer}}))
    for i in range(n):
        h = hex_hash(i)
        _v1_block_file(root / h[:2] / f"{h}.kvb", h, random_block(i, g), g)


def test_old_layout_root_is_migrated_and_its_blocks_still_read(tmp_path: Path) -> None:
    root = tmp_path / "kvstore"
    _old_layout_root(root, SMALL, 5)
    store = FileKVStore(root, SMALL)
    assert not (root / "dualpath-kvstore.json").exists()
    assert not any((root / f"{i:02x}").exists() for i in range(256))
    chain = [hex_hash(i) for i in range(5)]
    assert store.longest_prefix(chain) == 5
    for i, h in enumerate(chain):
        got = store.get(h)
        assert got is not None and np.array_equal(got, random_block(i))
    assert store.stats().corrupt_blocks == 0


def test_old_layout_root_of_another_model_keeps_its_blocks(tmp_path: Path) -> None:
    """The failure of the issue: an old root made for one geometry, opened for another."""
    root = tmp_path / "kvstore"
    _old_layout_root(root, SMALL, 3)
    tiny = FileKVStore(root, TINY_LIKE)  # used to raise "was created for ..."
    tiny.put(hex_hash(9), random_block(9, TINY_LIKE))
    small = FileKVStore(root, SMALL)
    assert small.longest_prefix([hex_hash(i) for i in range(3)]) == 3
    got = tiny.get(hex_hash(9))
    assert got is not None and np.array_equal(got, random_block(9, TINY_LIKE))


def test_files_and_directories_are_private(tmp_path: Path) -> None:
    root = tmp_path / "kvstore"
    root.mkdir(mode=0o755)
    os.chmod(root, 0o755)  # an existing root others could read
    store = FileKVStore(root, SMALL)
    store.put(hex_hash(1), random_block(1))
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    for path in root.rglob("*"):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))


def test_migrated_root_becomes_private(tmp_path: Path) -> None:
    root = tmp_path / "kvstore"
    _old_layout_root(root, SMALL, 2)
    os.chmod(root, 0o755)
    FileKVStore(root, SMALL)
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
