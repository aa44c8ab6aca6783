"""Token contents for trajectories, drawn deterministically when a real server is the target.

A trajectory stores lengths only. `TokenSource` draws token ids in [0, vocab_size) avoiding
`forbidden_ids` (special tokens such as EOS / BOS): the tokens of a hash block depend only on
(seed, hash id), so requests that share leading hash ids share leading tokens; the tokens of
an agent's appends depend on (seed, agent key, turn index), so a replay is reproducible.
The generated part of the next prompt is *not* drawn here: it is the token ids the server
actually returned.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np

from dualpath.core.errors import UserInputError
from dualpath.workload.trajectory import Trajectory

_HASH_STREAM = 1
_APPEND_STREAM = 2


def _key_int(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")


class TokenSource:
    """Deterministic token ids within a vocabulary, never a forbidden id."""

    def __init__(
        self,
        vocab_size: int,
        forbidden_ids: Iterable[int] = (),
        seed: int = 0,
    ) -> None:
        forbidden = {i for i in forbidden_ids if 0 <= i < vocab_size}
        if vocab_size < 1 or len(forbidden) >= vocab_size:
            raise UserInputError(
                f"no usable token ids: vocab_size={vocab_size}, {len(forbidden)} forbidden"
            )
        mask = np.ones(vocab_size, dtype=bool)
        mask[list(forbidden)] = False
        self._allowed = np.flatnonzero(mask).astype(np.int64)
        self._seed = seed

    def _draw(self, stream: int, key: int, sub: int, n: int) -> list[int]:
        rng = np.random.default_rng([self._seed, stream, key, sub])
        return [int(x) for x in self._allowed[rng.integers(0, len(self._allowed), n)]]

    def block(self, hash_id: int, block_tokens: int) -> list[int]:
        """All tokens of the block named hash_id (the same for every request that names it).

        Callers cut a partial last block from the full one, so it is a prefix of it.
        """
        return self._draw(_HASH_STREAM, hash_id & (2**63 - 1), block_tokens, block_tokens)

    def append(self, agent_key: str, turn_index: int, n: int) -> list[int]:
        """The n tokens an agent appends at one turn."""
        return self._draw(_APPEND_STREAM, _key_int(agent_key), turn_index, n)

    def turn_append(self, trajectory: Trajectory, agent_key: str, turn_index: int) -> list[int]:
        """Append tokens of turn turn_index; turn 0 starts with the trajectory's hash blocks."""
        n = trajectory.turns[turn_index].append_tokens
        if turn_index > 0 or not trajectory.prefix_hash_ids:
            return self.append(agent_key, turn_index, n)
        out: list[int] = []
        size = trajectory.hash_block_tokens
        for h in trajectory.prefix_hash_ids:
            if len(out) >= n:
                break
            out.extend(self.block(h, size)[: n - len(out)])
        if len(out) < n:
            out.extend(self.append(agent_key, turn_index, n - len(out)))
        return out
