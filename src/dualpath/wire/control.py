"""Control-plane messages between the scheduler process and the engine processes.

Engines talk to the scheduler over one zmq DEALER socket each (scheduler side: ROUTER); KV
bytes never travel here — they go engine to engine on the data plane (`wire.data`).

Journey of a request (DESIGN.md section 2):
  scheduler --AssignDecode--> DE, --AssignPrefill--> PE
  PE/DE read the hit blocks from the store (the side the scheduler chose) --ReadDone-->
  the PE prefills, KV flows PE -> DE layer by layer; PE --PrefillDone--> scheduler
  DE --Tokens--> scheduler (streamed to the client) ... --Finished--> scheduler
  either engine --TransferFailed--> scheduler when the KV between them did not get through

One union per direction (`ToEngine`, `ToScheduler`, `ToNode` for `dualpath node` agents): a
frame of the wrong direction is refused by the decoder like any malformed frame.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from dualpath.core.stop_rule import FinishReason, StopRule
from dualpath.wire.types import (
    Address,
    AttemptId,
    BlockHash,
    Count,
    EngineId,
    ErrorText,
    ReadSide,
    Role,
    Seed,
    Temperature,
    TokenId,
    TokenIds,
    TopP,
    check_seed,
)

_MAX_COUNTERS = 1024
CounterName = Annotated[str, msgspec.Meta(max_length=128)]


class Hello(msgspec.Struct, tag=True, frozen=True):
    """First message of an engine: who it is and where its data socket listens."""

    engine_id: EngineId
    node_id: EngineId
    role: Role
    data_address: Address
    kv_capacity_tokens: Count
    pid: Annotated[int, msgspec.Meta(ge=0)]
    prefill_tokens_per_s: Annotated[float, msgspec.Meta(ge=0.0)] = 0.0  # profiled, for β


class EngineStats(msgspec.Struct, tag=True, frozen=True):
    """Periodic report (every 0.5 s; doubles as the engine's heartbeat): NIC, store, buffer
    and load counters, flattened to `name -> value`."""

    engine_id: EngineId
    counters: Annotated[dict[CounterName, float], msgspec.Meta(max_length=_MAX_COUNTERS)]


class AssignPrefill(msgspec.Struct, tag=True, frozen=True):
    attempt: AttemptId
    prompt_token_ids: TokenIds
    hit_hashes: list[BlockHash]  # leading stored blocks to load (may shrink on read failure)
    read_path: ReadSide
    decode_engine: EngineId
    decode_address: Address
    layerwise: bool
    temperature: Temperature
    top_p: TopP
    seed: Seed | None
    banned_first_token_ids: list[TokenId]  # EOS while min_tokens > 0

    def __post_init__(self) -> None:
        check_seed(self.seed)


class AssignDecode(msgspec.Struct, tag=True, frozen=True):
    attempt: AttemptId
    prompt_token_ids: TokenIds
    hit_hashes: list[BlockHash]
    read_path: ReadSide
    prefill_engine: EngineId
    prefill_address: Address
    stop: StopRule  # for this attempt (a retry's rule counts only the tokens still to come)
    temperature: Temperature
    top_p: TopP
    seed: Seed | None
    kv_tokens: Count  # KV room to allocate (the scheduler reserved exactly this)

    def __post_init__(self) -> None:
        check_seed(self.seed)


class Abort(msgspec.Struct, tag=True, frozen=True):
    attempt: AttemptId


class Shutdown(msgspec.Struct, tag=True, frozen=True):
    pass


class PrefillDone(msgspec.Struct, tag=True, frozen=True):
    """PE finished an attempt's prefill (its tokens leave the PE's tok_e)."""

    engine_id: EngineId
    attempt: AttemptId
    cached_tokens: Count


class ReadDone(msgspec.Struct, tag=True, frozen=True):
    """An engine finished reading an attempt's hit blocks from storage (its node's read_q
    shrinks; `loaded_tokens` < `tokens` when blocks were missing or corrupt)."""

    engine_id: EngineId
    attempt: AttemptId
    tokens: Count
    loaded_tokens: Count


class Tokens(msgspec.Struct, tag=True, frozen=True):
    """New tokens of an attempt, from its DE (the first one is the PE's sampled token)."""

    engine_id: EngineId
    attempt: AttemptId
    token_ids: TokenIds


class Finished(msgspec.Struct, tag=True, frozen=True):
    engine_id: EngineId
    attempt: AttemptId
    finish_reason: FinishReason
    prompt_tokens: Count
    completion_tokens: Count
    cached_tokens: Count
    error: ErrorText | None = None


class TransferFailed(msgspec.Struct, tag=True, frozen=True):
    """An engine could not move an attempt's data to or from its peer (a send failed, or the
    peer's KV never came). The engine has dropped the attempt; the scheduler re-runs the
    request or, past its retry budget, ends it with an error."""

    engine_id: EngineId
    attempt: AttemptId
    peer_address: Address
    error: ErrorText


class NodeJoin(msgspec.Struct, tag=True, frozen=True):
    """A `dualpath node` agent asks to add one node of `engines` engines to the cluster."""

    role: Role
    engines: Annotated[int, msgspec.Meta(ge=1, le=64)]
    host: Address  # the node's internal address (where its engines' data sockets bind)
    pid: Annotated[int, msgspec.Meta(ge=0)]


class NodePing(msgspec.Struct, tag=True, frozen=True):
    """A node agent's heartbeat (the scheduler answers NodePong)."""

    node_id: EngineId


class NodeWelcome(msgspec.Struct, tag=True, frozen=True):
    """The node's id and its engines' ids, and the cluster's config (JSON) they run with."""

    node_id: EngineId
    engine_ids: Annotated[list[EngineId], msgspec.Meta(min_length=1, max_length=64)]
    config_json: Annotated[str, msgspec.Meta(max_length=1 << 16)]


class NodeRefused(msgspec.Struct, tag=True, frozen=True):
    reason: ErrorText


class NodePong(msgspec.Struct, tag=True, frozen=True):
    node_id: EngineId
    known: bool  # False: the scheduler no longer knows this node (it should join again)


ToEngine = AssignPrefill | AssignDecode | Abort | Shutdown
ToScheduler = (Hello | EngineStats | PrefillDone | ReadDone | Tokens | Finished | TransferFailed
               | NodeJoin | NodePing)
ToNode = NodeWelcome | NodeRefused | NodePong
