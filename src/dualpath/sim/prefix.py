"""Prefix hits of first turns whose content is named by hash ids (Mooncake traces).

In a Mooncake trace each hash id names one block (512 tokens) of a request's prompt; two
requests with the same leading ids share those leading tokens (the last block may be cut
short: it is a prefix of the block the id names). The HTTP target turns the ids into tokens
exactly so (`workload.tokens.TokenSource.turn_append`: hash blocks first, then the agent's
own tokens), and the runtime finds in its store the longest run of whole storage blocks
(`block_tokens`, chained hashes) that an earlier request persisted. The decode engine
persists a prompt's whole blocks when it emits the first token; blocks that also hold
answer tokens never match another request's prompt.

An agent may instead say how many leading tokens of its first prompt are already stored
(an int: a trajectory resumed mid-way whose context an earlier run persisted, as in
`dualpath bench storage-bound`).

`PrefixStore` reproduces that without tokens: a trie over hash-id sequences whose nodes keep
the most tokens any persisted request covered through them. Request B then hits
max over earlier A of min(A's persisted shared tokens, B's hash-covered tokens,
512 x shared leading ids), in whole storage blocks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class PrefixStore:
    """Per agent: the first turn's hash ids (or none); `persisted` / `stored_tokens`."""

    def __init__(self, hash_ids: Sequence[tuple[int, ...] | None], hash_block_tokens: Sequence[int],
                 block_tokens: int, stored: dict[int, int] | None = None) -> None:
        self._fixed = dict(stored or {})  # agent -> first-prompt tokens stored before the run
        self._ids = list(hash_ids)
        self._size = list(hash_block_tokens)
        self._block = block_tokens
        self._child: dict[tuple[int, int, int], int] = {}  # (hash block size, node, id) -> node
        self._best: list[int] = [0]  # node 0 is the root of every trie

    @classmethod
    def for_agents(cls, agents: Sequence[Sequence[Any]], block_tokens: int) -> PrefixStore | None:
        """From simulator agents `(arrival, turns[, (hash_ids, hash_block_tokens) or stored
        tokens])`; None when no agent names its content or a stored prefix (every first
        turn then misses, as with random tokens)."""
        ids: list[tuple[int, ...] | None] = []
        sizes: list[int] = []
        stored: dict[int, int] = {}
        for i, a in enumerate(agents):
            prefix = a[2] if len(a) > 2 else None
            if isinstance(prefix, int):
                stored[i] = prefix
                prefix = None
            if prefix and prefix[0]:
                ids.append(tuple(prefix[0]))
                sizes.append(int(prefix[1]))
            else:
                ids.append(None)
                sizes.append(1)
        if all(i is None for i in ids) and not stored:
            return None
        return cls(ids, sizes, block_tokens, stored)

    def _covered(self, agent: int, prompt: int) -> int:
        ids = self._ids[agent]
        return min(prompt, self._size[agent] * len(ids)) if ids else 0

    def persisted(self, agent: int, prompt_tokens: int) -> None:
        """Agent `agent`'s first-turn prompt of `prompt_tokens` has its whole blocks stored."""
        ids = self._ids[agent]
        if not ids:
            return
        size = self._size[agent]
        whole = prompt_tokens // self._block * self._block
        eff = min(self._covered(agent, prompt_tokens), whole)
        if eff <= 0:
            return
        node = 0
        child, best = self._child, self._best
        for h in ids[: -(-eff // size)]:
            key = (size, node, h)
            nxt = child.get(key)
            if nxt is None:
                nxt = len(best)
                child[key] = nxt
                best.append(0)
            node = nxt
            if eff > best[node]:
                best[node] = eff

    def stored_tokens(self, agent: int, prompt_tokens: int) -> int:
        """Leading tokens of agent `agent`'s first-turn prompt found in storage (whole blocks)."""
        ids = self._ids[agent]
        if not ids:
            fixed = min(self._fixed.get(agent, 0), prompt_tokens)
            return fixed // self._block * self._block
        size = self._size[agent]
        covered = self._covered(agent, prompt_tokens)
        node = 0
        hit = 0
        child, best = self._child, self._best
        for j, h in enumerate(ids):
            nxt = child.get((size, node, h))
            if nxt is None:
                break
            node = nxt
            hit = max(hit, min(best[node], covered, size * (j + 1)))
        return hit // self._block * self._block
