"""What a placed request charges to the load books — the one rule, written once.

The scheduler's per-call scratch copy (`virtual.VirtualCluster`), the runtime's books
(`runtime.ledger`) and the simulator all apply placements through `Charge`, so the three can
never disagree on what `seq_e`, `tok_e`, free KV and `read_q` a request accounts for:

- prefill part: the PE gets seq_e + 1 and tok_e + prompt tokens (DESIGN.md 3);
- decode part: the DE gets seq_e + 1, tok_e + its KV room, and that room off its free KV;
- read part: each side's node gets its share of the cached prefix on its read queue.

The runtime releases the parts as they end (read done, prefill done, decode finished); the
simulator likewise. `decode_kv_tokens` is the KV room rule (whole blocks, as decode engines
allocate them).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from dualpath.core.frozen import reduce_frozen
from dualpath.scheduler.types import ReadPlan, RequestInfo


def decode_kv_tokens(prompt_tokens: int, max_new_tokens: int, block_tokens: int) -> int:
    """KV room a request takes on its decode engine: prompt + max(1, new) tokens rounded up
    to whole blocks (every request produces at least one token)."""
    need = prompt_tokens + max(1, max_new_tokens)
    return -(-need // block_tokens) * block_tokens


class ChargePart(enum.Enum):
    PREFILL = "prefill"
    DECODE = "decode"
    READ = "read"

    # Members are singletons: identity hashing is exact and, unlike Enum's default (a
    # Python-level hash of the name), costs nothing in the simulator's hot paths.
    __hash__ = object.__hash__


ALL_PARTS = frozenset(ChargePart)


class LoadBooks(Protocol):
    """Anything that keeps per-engine and per-node load: who calls `charge_*` is `Charge`."""

    def charge_engine(self, engine: int, seq: int, tok: int, kv: int) -> None:
        """Add `seq` requests and `tok` tokens to `engine`, and take `kv` tokens of its free
        KV room (negative values release)."""
        ...

    def charge_node(self, node: int, tokens: int) -> None:
        """Add `tokens` to `node`'s storage read queue (negative releases)."""
        ...


@dataclass(frozen=True, slots=True)
class Charge:
    """One placed request's load, in the caller's engine/node numbering."""

    pe_engine: int
    de_engine: int
    pe_node: int
    de_node: int
    prefill_tokens: int
    decode_kv_tokens: int
    pe_read_tokens: int
    de_read_tokens: int

    @classmethod
    def of(cls, req: RequestInfo, pe_engine: int, de_engine: int, pe_node: int, de_node: int,
           plan: ReadPlan) -> Charge:
        return cls(pe_engine, de_engine, pe_node, de_node, req.prefill_load_tokens,
                   req.decode_kv_tokens, plan.pe_tokens, plan.de_tokens)

    @staticmethod
    def apply_placement(books: LoadBooks, req: RequestInfo, pe_engine: int, de_engine: int,
                        pe_node: int, de_node: int, plan: ReadPlan) -> None:
        """`Charge.of(...).apply(books)` without building the object (the scheduler's
        per-decision scratch charge, thousands of times per call)."""
        _charge(books, ALL_PARTS, 1, pe_engine, de_engine, pe_node, de_node,
                req.prefill_load_tokens, req.decode_kv_tokens, plan.pe_tokens, plan.de_tokens)

    @property
    def read_tokens(self) -> int:
        return self.pe_read_tokens + self.de_read_tokens

    def apply(self, books: LoadBooks, parts: frozenset[ChargePart] = ALL_PARTS,
              sign: int = 1) -> None:
        """Charge (`sign` 1) or release (`sign` -1) `parts` of this request's load."""
        _charge(books, parts, sign, self.pe_engine, self.de_engine, self.pe_node, self.de_node,
                self.prefill_tokens, self.decode_kv_tokens, self.pe_read_tokens, self.de_read_tokens)

    def apply_part(self, books: LoadBooks, part: ChargePart, sign: int = 1) -> None:
        """Charge or release one part (as `apply` with a single part)."""
        _charge(books, _SINGLE[part], sign, self.pe_engine, self.de_engine, self.pe_node,
                self.de_node, self.prefill_tokens, self.decode_kv_tokens, self.pe_read_tokens,
                self.de_read_tokens)

    def __reduce__(self) -> tuple[object, ...]:
        return reduce_frozen(self)  # pickle/copy, also when compiled


_SINGLE = {p: frozenset({p}) for p in ChargePart}


def _charge(books: LoadBooks, parts: frozenset[ChargePart], sign: int, pe_engine: int,
            de_engine: int, pe_node: int, de_node: int, prefill_tokens: int, decode_kv: int,
            pe_read: int, de_read: int) -> None:
    """The rule (module docstring): what each part adds to (or, sign -1, takes from) the books."""
    if ChargePart.PREFILL in parts:
        books.charge_engine(pe_engine, sign, sign * prefill_tokens, 0)
    if ChargePart.DECODE in parts:
        kv = sign * decode_kv
        books.charge_engine(de_engine, sign, kv, kv)
    if ChargePart.READ in parts:
        if pe_read:
            books.charge_node(pe_node, sign * pe_read)
        if de_read:
            books.charge_node(de_node, sign * de_read)
