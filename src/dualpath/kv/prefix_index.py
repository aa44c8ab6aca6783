"""The prefix index: which blocks a store holds, answered without touching block data.

It is a trie with one node per Full Block, keyed by block hash. Because block hashes are
chained (`dualpath.kv.hashing`), a hash already names its whole path from the root: the
node for block i of a prompt can only be reached through the nodes of blocks 0..i-1 of
that same prompt. So the trie is stored flattened, as a map from hash to node, with no
child pointers to maintain (vLLM's prefix cache keeps its block-hash map the same way),
and walking a prompt's chain down the trie is looking its hashes up one after another
until the first absent one.

Consistency model (the index is a *hint*, the files are the truth):

- It is built by listing the store's names on open and updated by this process's own puts,
  so it never claims a block that this process has not seen on disk at some point.
- Other processes write the same store, so it may under-report: `FileKVStore` extends an
  indexed prefix with cheap existence checks and adds what it finds (see
  `FileKVStore.longest_prefix`).
- It over-reports only when a file disappears behind its back (another process moved a
  corrupt block aside, or an operator deleted files); then the read that misses removes
  the node. A claimed block is therefore never trusted for data: `get` re-verifies it.

Bounded when asked (`max_entries`): blocks evicted by other processes leave the index only
when a lookup notices, so an index that is never trimmed would grow with every block ever
written. Past the bound the oldest entries are forgotten first; a forgotten block is found
again by `FileKVStore`'s existence checks, so the bound costs a `stat`, never a wrong answer.

Thread-safe: one lock around the map (operations are O(chain length) dict lookups).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterable, Sequence


class PrefixIndex:
    """Set of stored block hashes, queried as a trie of chained hashes. Mutated by add/discard."""

    def __init__(self, hashes: Iterable[str] = (), max_entries: int | None = None) -> None:
        self._lock = threading.Lock()
        self._max_entries = max_entries
        self._nodes: dict[str, None] = dict.fromkeys(hashes)  # insertion order = age
        self._trim()

    def _trim(self) -> None:
        if self._max_entries is None:
            return
        excess = len(self._nodes) - self._max_entries
        if excess > 0:
            for h in list(itertools.islice(self._nodes, excess)):
                del self._nodes[h]

    def __len__(self) -> int:
        return len(self._nodes)

    def __contains__(self, block_hash: object) -> bool:
        return block_hash in self._nodes

    def add(self, block_hash: str) -> None:
        """Record that `block_hash` is stored (after a put, or when seen on disk)."""
        with self._lock:
            self._nodes[block_hash] = None
            self._trim()

    def add_many(self, hashes: Iterable[str]) -> None:
        with self._lock:
            self._nodes.update(dict.fromkeys(hashes))
            self._trim()

    def discard(self, block_hash: str) -> None:
        """Forget `block_hash` (its file turned out to be missing or corrupt)."""
        with self._lock:
            self._nodes.pop(block_hash, None)

    def longest_prefix(self, hashes: Sequence[str]) -> int:
        """Number of leading `hashes` present: the depth reached walking the chain down the trie."""
        with self._lock:
            n = 0
            for h in hashes:
                if h not in self._nodes:
                    break
                n += 1
            return n

    def contains_many(self, hashes: Sequence[str]) -> list[bool]:
        with self._lock:
            return [h in self._nodes for h in hashes]

    def snapshot(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._nodes)
