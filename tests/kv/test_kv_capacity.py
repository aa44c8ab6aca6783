"""`max_bytes`: the root never holds more, least recently used leaves go first, a block being
read or continued by a stored block is never evicted, and evictions are counted."""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

import numpy as np
from kv_helpers import SMALL, hex_hash, random_block

from dualpath.kv import BlockGeometry, FileKVStore
from dualpath.kv.store_root import block_file_bytes

FILE = block_file_bytes(SMALL)  # bytes on disk per block (header page + payload)
OTHER = BlockGeometry(num_layers=2, block_tokens=4, bytes_per_token_per_layer=32)


def disk_bytes(root: Path) -> int:
    """Everything the store keeps under its geometry directories (blocks, temp files, quarantine)."""
    return sum(p.stat().st_size for p in root.glob("kv-*/**/*") if p.is_file()
               and p.name != "dualpath-kvstore.json")


def chain(tag: int, n: int) -> list[str]:
    return [hex_hash(tag * 1000 + i) for i in range(n)]


def put_chain(store: FileKVStore, hashes: list[str], seed: int = 0) -> None:
    for i, h in enumerate(hashes):
        store.put(h, random_block(seed + i), parent=hashes[i - 1] if i else None)


def test_cap_is_never_exceeded_and_ledger_is_exact(tmp_path: Path) -> None:
    root = tmp_path / "s"
    store = FileKVStore(root, SMALL, max_bytes=10 * FILE)
    for c in range(12):
        put_chain(store, chain(c, 3))
        assert disk_bytes(root) <= 10 * FILE
        assert store.stored_bytes() == disk_bytes(root)
    s = store.stats()
    assert s.evictions > 0 and s.evicted_bytes == s.evictions * FILE
    assert s.puts_dropped == 0
    assert store.longest_prefix(chain(11, 3)) == 3  # the most recent conversation is whole


def test_least_recently_used_leaves_go_first_and_inner_blocks_stay(tmp_path: Path) -> None:
    store = FileKVStore(tmp_path / "s", SMALL, max_bytes=8 * FILE, low_watermark=1.0)
    system = hex_hash(999_999)  # a system prompt every conversation continues
    store.put(system, random_block(0))
    convs = []
    for c in range(3):
        hashes = chain(c, 2)
        for i, h in enumerate(hashes):
            store.put(h, random_block(i), parent=hashes[i - 1] if i else system)
        convs.append([system, *hashes])
        time.sleep(0.01)  # distinct mtimes
    assert store.get(convs[0][2]) is not None  # conversation 0 is used again: now recent
    time.sleep(0.01)
    store.put(hex_hash(500), random_block(5), parent=system)  # 8 blocks: full, no eviction
    store.put(hex_hash(501), random_block(6), parent=system)  # needs one eviction
    assert store.stats().evictions == 1
    # The oldest unused leaf (conversation 1's last block) went; everything inner stayed.
    assert store.longest_prefix(convs[1]) == 2
    assert store.longest_prefix(convs[0]) == 3 and store.longest_prefix(convs[2]) == 3
    for _ in range(6):  # keep writing: the system prompt outlives every conversation
        store.put(hex_hash(600 + _), random_block(7), parent=system)
    assert store.contains_many([system]) == [True]
    assert store.stats().evictions >= 6


def test_a_block_being_read_is_never_evicted(tmp_path: Path) -> None:
    store = FileKVStore(tmp_path / "s", SMALL, max_bytes=4 * FILE, low_watermark=0.5)
    first = hex_hash(1)
    store.put(first, random_block(1))
    fd = os.open(store.path_of(first), os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_SH)  # what a reader (in any process) holds while it reads
    try:
        for i in range(2, 12):
            store.put(hex_hash(i), random_block(i))
        assert store.contains_many([first]) == [True]  # oldest, but in use
    finally:
        os.close(fd)
    for i in range(12, 16):
        store.put(hex_hash(i), random_block(i))
    assert store.contains_many([first]) == [False]  # once released it is a victim again


class _EvictedAfterOpen(FileKVStore):
    """A reader that loses the race: the block is deleted between its open and its lock."""

    def _open_for_read(self, block_hash: str, direct: bool) -> tuple[int, bool] | None:
        opened = super()._open_for_read(block_hash, direct)
        os.unlink(self.path_of(block_hash))
        return opened


def test_a_block_evicted_between_open_and_lock_is_a_miss(tmp_path: Path) -> None:
    store = _EvictedAfterOpen(tmp_path / "s", SMALL)
    store.put(hex_hash(1), random_block(1))
    store.put(hex_hash(2), random_block(2))
    assert store.get(hex_hash(1)) is None
    assert store.get_layer(hex_hash(2), 1) is None
    s = store.stats()
    assert s.evicted_reads == 2 and s.corrupt_blocks == 0 and s.get_hits == 0


def test_a_cap_smaller_than_a_block_drops_puts(tmp_path: Path) -> None:
    store = FileKVStore(tmp_path / "s", SMALL, max_bytes=FILE - 1)
    store.put(hex_hash(1), random_block(1))
    assert store.stats().puts_dropped == 1
    assert store.get(hex_hash(1)) is None and disk_bytes(tmp_path / "s") == 0
    assert store.stored_bytes() == 0


def test_cap_covers_every_geometry_and_every_instance(tmp_path: Path) -> None:
    root = tmp_path / "s"
    cap = 6 * FILE
    a = FileKVStore(root, SMALL, max_bytes=cap)
    b = FileKVStore(root, OTHER, max_bytes=cap)
    reader = FileKVStore(root, SMALL)  # no cap of its own: sees the others' evictions
    put_chain(a, chain(1, 4))
    assert reader.longest_prefix(chain(1, 4)) == 4
    for i in range(10):
        b.put(hex_hash(50 + i), random_block(i, OTHER))
        assert disk_bytes(root) <= cap
    assert reader.longest_prefix(chain(1, 4)) < 4  # evicted by the other geometry's writer
    assert a.stats().evictions + b.stats().evictions > 0
    got = reader.get(hex_hash(59))
    assert got is None  # another geometry's block is never visible here
    latest = b.get(hex_hash(59))
    assert latest is not None and np.array_equal(latest, random_block(9, OTHER))


def test_quarantined_blocks_count_and_go_first(tmp_path: Path) -> None:
    root = tmp_path / "s"
    store = FileKVStore(root, SMALL, max_bytes=5 * FILE, low_watermark=1.0)
    store.put(hex_hash(1), random_block(1))
    with open(store.path_of(hex_hash(1)), "r+b") as f:
        f.seek(FILE - 3)
        f.write(b"\xff\xff\xff")
    assert store.get(hex_hash(1)) is None  # corrupt: moved to quarantine, still on disk
    assert len(list((store.dir / ".quarantine").iterdir())) == 1
    for i in range(2, 7):
        store.put(hex_hash(i), random_block(i))
    assert disk_bytes(root) <= 5 * FILE
    assert list((store.dir / ".quarantine").iterdir()) == []
    assert store.contains_many([hex_hash(i) for i in range(2, 7)]) == [True] * 5


def test_unbounded_store_keeps_the_ledger(tmp_path: Path) -> None:
    root = tmp_path / "s"
    store = FileKVStore(root, SMALL)
    put_chain(store, chain(1, 5))
    assert store.stored_bytes() == disk_bytes(root) == 5 * FILE
    assert FileKVStore(root, SMALL).stored_bytes() == 5 * FILE  # shared, persistent


def test_the_index_is_bounded_and_forgetting_costs_only_a_stat(tmp_path: Path) -> None:
    from dualpath.kv import PrefixIndex

    index = PrefixIndex([hex_hash(i) for i in range(5)], max_entries=3)
    assert len(index) == 3 and hex_hash(0) not in index and hex_hash(4) in index
    store = FileKVStore(tmp_path / "s", SMALL, max_bytes=4 * FILE)
    bound = 2 * 4 + 1024
    for c in range(bound // 3 + 5):  # far more puts than the index may hold
        put_chain(store, chain(c, 3))
    assert len(store.index) <= bound
    assert store.longest_prefix(chain(c, 3)) == 3


def test_the_rename_happens_under_the_root_lock(tmp_path: Path, monkeypatch) -> None:
    """An eviction's listing resets the ledger; a rename racing that listing can be seen under
    neither name (the soak test once saw a block on disk the ledger did not count), so a put
    renames while it holds the lock every listing holds."""
    root = tmp_path / "s"
    store = FileKVStore(root, SMALL, max_bytes=10 * FILE)
    held: list[bool] = []
    real_replace = os.replace

    def replace(src: str, dst: str) -> None:
        fd = os.open(root / ".dualpath-kv-ledger", os.O_RDWR)  # another open file description
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held.append(False)
            fcntl.flock(fd, fcntl.LOCK_UN)
        except BlockingIOError:
            held.append(True)
        finally:
            os.close(fd)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    put_chain(store, chain(1, 3))
    assert held == [True, True, True]


def test_two_puts_of_one_block_count_once(tmp_path: Path, monkeypatch) -> None:
    """Two writers that both found a block missing both write it; the second replaces the
    first, and the ledger counts the file once (it counted both before)."""
    root = tmp_path / "s"
    first, second = FileKVStore(root, SMALL, max_bytes=10 * FILE), FileKVStore(root, SMALL)
    block = random_block(3)
    first.put(hex_hash(7), block)
    monkeypatch.setattr(second, "_exists", lambda _h: False)  # it looked before the first put
    second.put(hex_hash(7), block)
    assert disk_bytes(root) == FILE
    assert first.stored_bytes() == second.stored_bytes() == FILE
    assert np.array_equal(first.get(hex_hash(7)), block)
