"""Token contents: deterministic, inside the vocabulary, never a forbidden id."""

from __future__ import annotations

import pytest

from dualpath.core.errors import UserInputError
from dualpath.workload.tokens import TokenSource
from dualpath.workload.trajectory import Trajectory, Turn


def test_tokens_avoid_forbidden_ids_and_are_deterministic() -> None:
    src = TokenSource(50, forbidden_ids=[0, 1, 2, 49], seed=3)
    ids = src.append("agent", 0, 5000)
    assert set(ids) <= set(range(3, 49)) and len(set(ids)) == 46
    assert ids == TokenSource(50, [0, 1, 2, 49], seed=3).append("agent", 0, 5000)
    assert ids[:100] != src.append("agent", 1, 100)
    assert ids[:100] != src.append("other", 0, 100)


def test_partial_block_is_prefix_of_full_block() -> None:
    src = TokenSource(1000, seed=1)
    t_short = Trajectory("a", (Turn(100, 1),), prefix_hash_ids=(5,), hash_block_tokens=64)
    t_long = Trajectory("b", (Turn(64 + 30, 1),), prefix_hash_ids=(5, 6), hash_block_tokens=64)
    short = src.turn_append(t_short, "x", 0)
    long = src.turn_append(t_long, "y", 0)
    assert short[:64] == long[:64] == src.block(5, 64)
    assert long[64:] == src.block(6, 64)[:30]


def test_no_usable_ids() -> None:
    with pytest.raises(UserInputError):
        TokenSource(3, forbidden_ids=[0, 1, 2])
