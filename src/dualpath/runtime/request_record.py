"""One client request as the scheduler process tracks it, and its phases.

A request moves through the phases below; each placement of it is one `Attempt` (a fail-over
or a transfer retry starts a new one with the tokens already streamed appended to its prompt).
Only `RequestBooks` changes a record.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from dualpath.core.requests import GenerateRequest
from dualpath.core.stop_rule import StopRule
from dualpath.scheduler.charges import Charge, ChargePart, decode_kv_tokens
from dualpath.scheduler.types import Placement
from dualpath.wire.types import AttemptId


class Phase(enum.Enum):
    QUEUED = "queued"  # waiting for the scheduler
    BACKOFF = "backoff"  # a failed transfer's retry waits out the peer's fast-fail window
    LOADING = "loading"  # placed; the hit prefix is being read from storage
    PREFILLING = "prefilling"  # placed; the prefill engine computes the miss tokens
    DECODING = "decoding"  # the prefill is over (or tokens flow); the decode engine has it
    FINISHED = "finished"  # ended: stop, length or abort
    FAILED = "failed"  # ended with an error

    @property
    def placed(self) -> bool:
        return self in (Phase.LOADING, Phase.PREFILLING, Phase.DECODING)

    @property
    def ended(self) -> bool:
        return self in (Phase.FINISHED, Phase.FAILED)


# Phases only move forward within an attempt (messages of one attempt can arrive out of order:
# a decode engine's first token may overtake the prefill engine's PrefillDone).
_ORDER = {Phase.LOADING: 0, Phase.PREFILLING: 1, Phase.DECODING: 2}


@dataclass
class Attempt:
    """One placement of a request: which engines, what it charged, what is still held."""

    id: AttemptId
    placement: Placement
    charge: Charge
    stop: StopRule  # for this attempt's tokens only
    generated_before: int  # tokens streamed by earlier attempts
    held: set[ChargePart] = field(default_factory=set)

    @property
    def pe(self) -> int:
        return self.placement.pe_engine

    @property
    def de(self) -> int:
        return self.placement.de_engine

    @property
    def read_engine(self) -> int:
        """The engine whose reader reports ReadDone (the read side's engine)."""
        return self.pe if self.placement.read.side == "pe" else self.de


@dataclass
class RequestRecord:
    request: GenerateRequest
    order: int  # arrival order (re-queued requests go back in it)
    stop: StopRule  # for the whole answer
    prompt: list[int]  # grows on a retry by the tokens already streamed
    hashes: list[str]
    cached_tokens: int
    block_size: int
    phase: Phase = Phase.QUEUED
    generated: list[int] = field(default_factory=list)
    attempt: Attempt | None = None
    attempts: int = 0
    first_cached_tokens: int | None = None  # what the first attempt really loaded
    transfer_failures: int = 0

    @property
    def rid(self) -> str:
        return self.request.request_id

    @property
    def remaining_tokens(self) -> int:
        return self.stop.max_tokens - len(self.generated)

    @property
    def kv_tokens(self) -> int:
        """KV room the next attempt reserves on its decode engine (the shared rule)."""
        return decode_kv_tokens(len(self.prompt), self.remaining_tokens, self.block_size)

    def advance(self, phase: Phase) -> None:
        """Move a placed request forward to `phase` (never backward)."""
        if self.phase.placed and _ORDER[phase] > _ORDER[self.phase]:
            self.phase = phase
