"""FreeBlocks / PagedKVCache allocation: accounting under random operation sequences, and the
contiguity it promises (one run whenever one free run is long enough, growth in place)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dualpath.core.errors import SchedulingError
from dualpath.core.model_config import ModelConfig
from dualpath.model.block_runs import FreeBlocks, runs_of
from dualpath.model.kv_cache import PagedKVCache

CONFIG = ModelConfig(name="t", vocab_size=16, hidden_size=8, intermediate_size=8, num_layers=1,
                     num_heads=2, num_kv_heads=1, head_dim=4)


def test_runs_of() -> None:
    assert runs_of([3, 4, 5, 9, 1, 2]) == [(3, 3), (9, 1), (1, 2)]
    assert runs_of([]) == []


def test_take_prefers_growth_then_best_fit_then_longest() -> None:
    free = FreeBlocks(12)
    assert free.take(3) == [0, 1, 2]
    free.give_back([1])  # free: 1, 3..11
    assert free.take(2, after=2) == [3, 4]  # right after the sequence's last block
    assert free.take(1) == [1]  # best fit: the one-block hole, not the long run
    free.give_back([3, 4])  # free: 3, 4, 5..11 -> one run of 9
    taken = free.take(10 - 1)
    assert runs_of(taken) == [(3, 9)]
    free.give_back([3, 5, 7, 9])
    assert sorted(free.take(4)) == [3, 5, 7, 9]  # no run fits: several runs, nothing lost
    with pytest.raises(SchedulingError):
        free.take(1)
    with pytest.raises(SchedulingError):
        free.give_back([0, 0])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["alloc", "append", "free"]),
                          st.integers(0, 5), st.integers(1, 40)), max_size=60))
def test_random_operations_keep_the_books(ops: list[tuple[str, int, int]]) -> None:
    cache = PagedKVCache(CONFIG, num_blocks=24, block_size=4)
    live: dict[str, int] = {}
    for op, sid_n, n_tokens in ops:
        sid = f"s{sid_n}"
        free_before = cache.num_free_blocks
        if op == "alloc" and sid not in live:
            if cache.can_allocate(n_tokens):
                longest = max((n for _, n in runs_of(sorted(_free_ids(cache)))), default=0)
                cache.allocate(sid, n_tokens)
                live[sid] = n_tokens
                need = cache.blocks_for(n_tokens)
                if need <= longest:  # one free run was long enough: the sequence is one run
                    assert len(runs_of(cache.block_table(sid))) == 1
            else:
                with pytest.raises(SchedulingError):
                    cache.allocate(sid, n_tokens)
                assert cache.num_free_blocks == free_before
        elif op == "append" and sid in live:
            cache.commit(sid, cache.capacity_tokens(sid) - cache.num_tokens(sid))
            grow = n_tokens % 9 + 1
            if cache.can_append(sid, grow):
                table = cache.block_table(sid)
                next_free = table[-1] + 1 in _free_ids(cache) if table else False
                cache.append(sid, grow)
                if next_free and len(cache.block_table(sid)) > len(table):
                    assert cache.block_table(sid)[len(table)] == table[-1] + 1
            else:
                with pytest.raises(SchedulingError):
                    cache.append(sid, grow)
        elif op == "free" and sid in live:
            cache.free(sid)
            del live[sid]
        cache.check_integrity()
        owned = [b for s in live for b in cache.block_table(s)]
        assert len(owned) == len(set(owned)) == 24 - cache.num_free_blocks


def _free_ids(cache: PagedKVCache) -> set[int]:
    owned = {b for s in cache._seqs for b in cache.block_table(s)}
    return set(range(cache.num_blocks)) - owned
