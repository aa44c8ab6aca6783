"""Bounded field types of the internal plane, and the attempt id.

Every int, string and list a frame carries has a bound here, so the validating decoder
refuses an absurd value (a negative engine id, a 2^70 seed, a 10^9-element token list)
before any engine or the scheduler acts on it.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from dualpath.core.stop_rule import MAX_TOKENS_PER_REQUEST, Count, TokenId

__all__ = [
    "MAX_SEED",
    "Address",
    "AttemptId",
    "BlockHash",
    "Count",
    "EngineId",
    "ErrorText",
    "LayerIndex",
    "ReadSide",
    "Role",
    "Seed",
    "Temperature",
    "TokenId",
    "TokenIds",
    "TopP",
    "check_seed",
]

EngineId = Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)]
LayerIndex = Annotated[int, msgspec.Meta(ge=0, le=4095)]
TokenIds = Annotated[list[TokenId], msgspec.Meta(max_length=MAX_TOKENS_PER_REQUEST)]
BlockHash = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{64}$")]  # SHA-256 hex (kv.hashing)
Address = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
ErrorText = Annotated[str, msgspec.Meta(max_length=8192)]
RequestIdText = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
# uint64 (checked in __post_init__: msgspec bounds stop at int64).
Seed = Annotated[int, msgspec.Meta(ge=0)]
MAX_SEED = 2**64 - 1


def check_seed(seed: int | None) -> None:
    if seed is not None and seed > MAX_SEED:
        raise ValueError(f"seed {seed} does not fit in uint64")
Temperature = Annotated[float, msgspec.Meta(ge=0.0, le=2.0)]
TopP = Annotated[float, msgspec.Meta(gt=0.0, le=1.0)]
Role = Literal["prefill", "decode"]
ReadSide = Literal["pe", "de"]


class AttemptId(msgspec.Struct, frozen=True, array_like=True):
    """One attempt of one client request: the id engines know it by.

    Each attempt (a fail-over or transfer retry starts a new one) has its own, so a message of
    an aborted attempt can never be taken for its successor's, and an engine that saw the
    abort (and drops that attempt's stragglers for good) can still serve the retry. Compared
    field by field; never parsed out of a string.
    """

    request_id: RequestIdText
    attempt: Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)]

    def __str__(self) -> str:  # for logs only
        return f"{self.request_id}#{self.attempt}"
