"""Free-block bookkeeping for the paged KV cache that keeps sequences in few contiguous runs.

Decode attention reads a sequence's KV straight out of the block pool as views, one per run
of consecutive physical blocks (`paged_attention.py`), so the fewer runs a sequence has the
fewer attention calls a step makes, and a sequence in one run costs one call with no copy.
`FreeBlocks.take` therefore picks, in order: the blocks right after the sequence's last block
(a growing sequence stays one run), then the smallest free run that holds the rest (best
fit, which leaves long runs for long requests), else the longest runs first.

Pure Python, no torch: the allocator's properties are tested on their own.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from dualpath.core.errors import SchedulingError

Run = tuple[int, int]  # (first block id, number of blocks)


def runs_of(blocks: Sequence[int]) -> list[Run]:
    """Maximal runs of consecutive ids, in order: [3, 4, 5, 9, 1] -> [(3, 3), (9, 1), (1, 1)]."""
    runs: list[Run] = []
    for b in blocks:
        if runs and runs[-1][0] + runs[-1][1] == b:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((b, 1))
    return runs


class FreeBlocks:
    """The set of free physical block ids of a pool of `num_blocks`.

    Mutating calls: `take` (removes ids and returns them) and `give_back`.
    """

    def __init__(self, num_blocks: int) -> None:
        self._free: set[int] = set(range(num_blocks))

    def __len__(self) -> int:
        return len(self._free)

    def ids(self) -> list[int]:
        return sorted(self._free)

    def give_back(self, blocks: Iterable[int]) -> None:
        """Return ids to the free set (mutates; changes nothing if one is already free)."""
        ids = list(blocks)
        if len(set(ids)) != len(ids) or not self._free.isdisjoint(ids):
            raise SchedulingError(f"blocks freed twice: {sorted(self._free.intersection(ids))}")
        self._free.update(ids)

    def take(self, n: int, after: int | None = None) -> list[int]:
        """`n` free ids in as few consecutive runs as possible (see module doc; mutates).

        `after`: the id of the sequence's current last block, if it has one.
        """
        if n > len(self._free):
            raise SchedulingError(f"need {n} blocks, {len(self._free)} free")
        if n <= 0:
            return []
        runs = runs_of(sorted(self._free))
        picked: list[int] = []
        if after is not None:
            for i, (start, length) in enumerate(runs):
                if start == after + 1:
                    use = min(n, length)
                    picked.extend(range(start, start + use))
                    runs[i] = (start + use, length - use)
                    break
        while len(picked) < n:
            need = n - len(picked)
            fitting = [(length, start, i) for i, (start, length) in enumerate(runs)
                       if length >= need]
            if fitting:
                _, start, i = min(fitting)
                use = need
            else:
                length, neg_start, i = max((length, -start, i)
                                           for i, (start, length) in enumerate(runs))
                start, use = -neg_start, length
            picked.extend(range(start, start + use))
            runs[i] = (start + use, runs[i][1] - use)
        self._free.difference_update(picked)
        return picked
