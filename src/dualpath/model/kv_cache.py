"""A paged KV cache for engines: a fixed pool of blocks of `block_size` tokens.

Pool layout: `[num_layers, num_blocks, block_size, 2, H, D]`, so one physical block of one
layer is contiguous and a block's Full Block bytes are one gather away. Sequences own blocks
through a block table (logical block i -> physical block id). Blocks are handed out so that
a sequence stays in few runs of consecutive physical blocks (`block_runs.FreeBlocks`), and
decode reads its KV as views of those runs (`segments`): no copy of the context per step.

Resource calls ask before they do (nano-vllm style): `can_allocate` then `allocate`,
`can_append` then `append`; `allocate`/`append` raise `SchedulingError` if asked anyway, and
change nothing in that case. Mutating calls: `allocate`, `append`, `free`, `take_full_blocks`,
`import_blocks`, and the `PagedSequence` views' `write`/`commit`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from dualpath.core.errors import SchedulingError
from dualpath.core.model_config import ModelConfig
from dualpath.model.block_runs import FreeBlocks, Run, runs_of
from dualpath.model.kv_bytes import kv_from_bytes, kv_to_bytes, torch_dtype

DEFAULT_BLOCK_SIZE = 64


@dataclass
class _SeqState:
    blocks: list[int] = field(default_factory=list)
    num_tokens: int = 0
    full_blocks_taken: int = 0
    runs: list[Run] | None = None  # runs_of(blocks), recomputed after the table changes


class PagedKVCache:
    """Block pool + per-sequence block tables. Sequence ids are any hashable str."""

    def __init__(self, config: ModelConfig, num_blocks: int,
                 block_size: int = DEFAULT_BLOCK_SIZE) -> None:
        if num_blocks <= 0 or block_size <= 0:
            raise SchedulingError("num_blocks and block_size must be positive")
        self.config = config
        self.block_size = block_size
        self.num_blocks = num_blocks
        # empty, not zeros: a position is only ever read after it was written (attention reads
        # up to the sequence's length, exports only full blocks), and untouched pages cost no
        # memory, so an idle pool of any size stays out of the RSS until blocks are used
        self.pool = torch.empty(
            (config.num_layers, num_blocks, block_size, 2, config.num_kv_heads, config.head_dim),
            dtype=torch_dtype(config.kv_dtype),
        )
        self._free = FreeBlocks(num_blocks)
        self._seqs: dict[str, _SeqState] = {}

    # ---- accounting ----------------------------------------------------------------------

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    def blocks_for(self, n_tokens: int) -> int:
        return -(-n_tokens // self.block_size)

    def can_allocate(self, n_tokens: int) -> bool:
        """Could a new sequence reserve room for `n_tokens` tokens right now?"""
        return self.blocks_for(n_tokens) <= len(self._free)

    def allocate(self, seq_id: str, n_tokens: int, persisted_tokens: int = 0) -> None:
        """Reserve room for `n_tokens` of a new sequence (mutates).

        `persisted_tokens`: leading tokens already in the KV store, whose full blocks
        `take_full_blocks` must therefore never report.
        """
        if seq_id in self._seqs:
            raise SchedulingError(f"sequence {seq_id!r} already has blocks")
        if not self.can_allocate(n_tokens):
            raise SchedulingError(
                f"cannot allocate {self.blocks_for(n_tokens)} blocks for {seq_id!r}: "
                f"{len(self._free)} free"
            )
        state = _SeqState(full_blocks_taken=persisted_tokens // self.block_size)
        state.blocks = self._free.take(self.blocks_for(n_tokens))
        self._seqs[seq_id] = state

    def capacity_tokens(self, seq_id: str) -> int:
        return len(self._state(seq_id).blocks) * self.block_size

    def can_append(self, seq_id: str, n_tokens: int = 1) -> bool:
        """Could `seq_id` grow to `num_tokens + n_tokens` tokens?"""
        state = self._state(seq_id)
        need = self.blocks_for(state.num_tokens + n_tokens) - len(state.blocks)
        return need <= len(self._free)

    def append(self, seq_id: str, n_tokens: int = 1) -> None:
        """Make room for `n_tokens` more tokens of `seq_id` (mutates)."""
        if not self.can_append(seq_id, n_tokens):
            raise SchedulingError(f"no free block to grow {seq_id!r}")
        state = self._state(seq_id)
        need = self.blocks_for(state.num_tokens + n_tokens) - len(state.blocks)
        if need > 0:
            state.blocks.extend(self._free.take(need, state.blocks[-1] if state.blocks else None))
            state.runs = None

    def free(self, seq_id: str) -> None:
        """Return all of `seq_id`'s blocks to the pool (mutates)."""
        state = self._seqs.pop(seq_id, None)
        if state is None:
            raise SchedulingError(f"unknown sequence {seq_id!r}")
        self._free.give_back(state.blocks)

    def block_table(self, seq_id: str) -> tuple[int, ...]:
        return tuple(self._state(seq_id).blocks)

    def num_tokens(self, seq_id: str) -> int:
        return self._state(seq_id).num_tokens

    def check_integrity(self) -> None:
        """Every block is either free or owned by exactly one sequence (cheap; run when idle)."""
        owned = [b for s in self._seqs.values() for b in s.blocks]
        everything = owned + self._free.ids()
        if sorted(everything) != list(range(self.num_blocks)):
            raise SchedulingError("paged KV cache block accounting is inconsistent")

    # ---- data ----------------------------------------------------------------------------

    def sequence(self, seq_id: str) -> PagedSequence:
        """A `KVSequence` view of `seq_id` for `Transformer.decode`."""
        self._state(seq_id)
        return PagedSequence(self, seq_id)

    def write(self, seq_id: str, layer: int, start_pos: int, kv: torch.Tensor) -> None:
        """Store `kv` `[n, 2, H, D]` at positions `start_pos ..` (must be within reserved room)."""
        state = self._state(seq_id)
        end = start_pos + kv.shape[0]
        if end > len(state.blocks) * self.block_size:
            raise SchedulingError(f"write past the reserved room of {seq_id!r} ({end} tokens)")
        pos = start_pos
        while pos < end:
            block, offset = divmod(pos, self.block_size)
            n = min(self.block_size - offset, end - pos)
            self.pool[layer, state.blocks[block], offset : offset + n] = kv[pos - start_pos :
                                                                            pos - start_pos + n]
            pos += n

    def read(self, seq_id: str, layer: int, end_pos: int | None = None) -> torch.Tensor:
        """KV `[T, 2, H, D]` of `layer` for positions `0 .. T-1` (T defaults to num_tokens)."""
        state = self._state(seq_id)
        end = state.num_tokens if end_pos is None else end_pos
        n_blocks = self.blocks_for(end)
        table = torch.tensor(state.blocks[:n_blocks], dtype=torch.long)
        gathered = self.pool[layer, table]  # [n_blocks, block_size, 2, H, D]
        return gathered.reshape(-1, *gathered.shape[2:])[:end]

    def segments(self, seq_id: str, layer: int, end_pos: int) -> list[torch.Tensor]:
        """Views `[T_i, 2, H, D]` into the pool that hold positions `0 .. end_pos-1` of `layer`
        in order, one per run of consecutive physical blocks (no copy; do not write to them)."""
        state = self._state(seq_id)
        if end_pos > len(state.blocks) * self.block_size:
            raise SchedulingError(f"read past the reserved room of {seq_id!r} ({end_pos} tokens)")
        if state.runs is None:
            state.runs = runs_of(state.blocks)
        pool = self.pool[layer]
        views: list[torch.Tensor] = []
        pos = 0
        for first, count in state.runs:
            if pos >= end_pos:
                break
            n_blocks = min(count, self.blocks_for(end_pos - pos))
            n = min(n_blocks * self.block_size, end_pos - pos)
            views.append(pool[first : first + n_blocks].flatten(0, 1)[:n])
            pos += n
        return views

    def commit(self, seq_id: str, n_tokens: int) -> None:
        state = self._state(seq_id)
        if state.num_tokens + n_tokens > len(state.blocks) * self.block_size:
            raise SchedulingError(f"commit past the reserved room of {seq_id!r}")
        state.num_tokens += n_tokens

    def take_full_blocks(self, seq_id: str) -> list[int]:
        """Logical indices of blocks that became full since the last call (mutates).

        The decode engine persists each of them (`export_block`) the moment it is reported.
        """
        state = self._state(seq_id)
        full = state.num_tokens // self.block_size
        fresh = list(range(state.full_blocks_taken, full))
        state.full_blocks_taken = max(full, state.full_blocks_taken)
        return fresh

    def export_block(self, seq_id: str, index: int) -> np.ndarray:
        """Full Block bytes `[num_layers, block_size, bytes_per_token]` of a full logical block."""
        state = self._state(seq_id)
        if (index + 1) * self.block_size > state.num_tokens:
            raise SchedulingError(f"block {index} of {seq_id!r} is not full")
        phys = state.blocks[index]
        return np.stack([kv_to_bytes(self.pool[layer, phys])
                         for layer in range(self.config.num_layers)])

    def import_blocks(self, seq_id: str, full_blocks: Sequence[np.ndarray]) -> None:
        """Append whole Full Blocks (e.g. loaded from the store) at the sequence's end (mutates).

        The sequence's current length must be block-aligned and the room reserved.
        """
        state = self._state(seq_id)
        if state.num_tokens % self.block_size:
            raise SchedulingError(f"{seq_id!r} is not block-aligned ({state.num_tokens} tokens)")
        for block in full_blocks:
            for layer in range(self.config.num_layers):
                self.write(seq_id, layer, state.num_tokens, kv_from_bytes(block[layer], self.config))
            self.commit(seq_id, self.block_size)

    def _state(self, seq_id: str) -> _SeqState:
        try:
            return self._seqs[seq_id]
        except KeyError:
            raise SchedulingError(f"unknown sequence {seq_id!r}") from None


class PagedSequence:
    """`KVSequence` over one sequence of a `PagedKVCache`."""

    def __init__(self, cache: PagedKVCache, seq_id: str) -> None:
        self.cache = cache
        self.seq_id = seq_id

    @property
    def num_tokens(self) -> int:
        return self.cache.num_tokens(self.seq_id)

    def write(self, layer: int, start_pos: int, kv: torch.Tensor) -> None:
        self.cache.write(self.seq_id, layer, start_pos, kv)

    def read(self, layer: int, end_pos: int) -> torch.Tensor:
        return self.cache.read(self.seq_id, layer, end_pos)

    def segments(self, layer: int, end_pos: int) -> list[torch.Tensor]:
        return self.cache.segments(self.seq_id, layer, end_pos)

    def commit(self, n_tokens: int) -> None:
        self.cache.commit(self.seq_id, n_tokens)
