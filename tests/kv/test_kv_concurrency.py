"""Several processes share one FileKVStore root: every block verifies, the index catches up."""

from __future__ import annotations

import multiprocessing as mp
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
from kv_helpers import SMALL, hex_hash, random_block

from dualpath.kv import FileKVStore, MemoryKVStore, PrefixIndex

WRITERS = 4
BLOCKS = 24


def _writer(root: str, worker: int) -> None:
    """Write an overlapping set of blocks (each block is put by 2-3 writers), in a shuffled order."""
    store = FileKVStore(root, SMALL)
    ids = [i for i in range(BLOCKS) if i % WRITERS != worker]
    random.Random(worker).shuffle(ids)
    for _ in range(2):
        for i in ids:
            store.put(hex_hash(i), random_block(i))


def _run(target: Callable[..., None], *args_list: tuple[object, ...]) -> None:
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=target, args=args) for args in args_list]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0


def test_concurrent_writers_leave_every_block_valid(tmp_path: Path) -> None:
    root = tmp_path / "store"
    observer = FileKVStore(root, SMALL)  # opened before the writers: its index is empty
    _run(_writer, *[(str(root), w) for w in range(WRITERS)])
    chain = [hex_hash(i) for i in range(BLOCKS)]
    assert observer.longest_prefix(chain) == BLOCKS  # found by stat beyond the (empty) index
    for i, h in enumerate(chain):
        got = observer.get(h)
        assert got is not None and np.array_equal(got, random_block(i))
    assert observer.stats().corrupt_blocks == 0
    leftovers = [p for p in root.rglob(".*.tmp")]
    assert leftovers == []
    assert len(FileKVStore(root, SMALL).index) == BLOCKS


def _chain_writer(root: str, chain: list[str], upto: int) -> None:
    store = FileKVStore(root, SMALL)
    for i, h in enumerate(chain[:upto]):
        store.put(h, random_block(i))


def test_prefix_answers_match_brute_force_including_other_writers(tmp_path: Path) -> None:
    rng = random.Random(7)
    root = tmp_path / "store"
    store = FileKVStore(root, SMALL)
    truth = MemoryKVStore(SMALL)  # brute force: what is on disk, block by block
    chains = [[hex_hash(1000 * c + i) for i in range(12)] for c in range(5)]
    for chain in chains:
        for i in rng.sample(range(12), 6):
            store.put(chain[i], random_block(i))
            truth.put(chain[i], random_block(i))
    # Another process extends chains 0 and 3 after this store was opened.
    for c, upto in ((0, 10), (3, 12)):
        _run(_chain_writer, (str(root), chains[c], upto))
        for i, h in enumerate(chains[c][:upto]):
            truth.put(h, random_block(i))
    for chain in chains:
        for start in range(len(chain)):
            query = chain[start:]
            expect = 0
            while expect < len(query) and Path(store.path_of(query[expect])).exists():
                expect += 1
            assert store.longest_prefix(query) == expect == truth.longest_prefix(query)
            assert store.contains_many(query) == truth.contains_many(query)


def test_prefix_index_walk() -> None:
    index = PrefixIndex(["a", "b"])
    assert index.longest_prefix(["a", "b", "c"]) == 2
    index.add("c")
    assert index.longest_prefix(["a", "b", "c"]) == 3
    index.discard("b")
    assert index.longest_prefix(["a", "b", "c"]) == 1
    assert index.contains_many(["c", "b"]) == [True, False]
    assert index.snapshot() == {"a", "c"}
