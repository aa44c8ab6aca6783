"""Control-plane messages between the scheduler process and engine processes.

Plain msgspec structs, tagged so one decoder reads any of them. Engines talk to the scheduler
over one zmq DEALER socket each (scheduler side: ROUTER); KV bytes never travel here — they
go engine to engine over the transfer layer (see engine/kv_messages.py).

Journey of a request (DESIGN.md section 2):
  scheduler --AssignDecode--> DE, --AssignPrefill--> PE
  PE/DE read hit blocks from the store (path chosen by the scheduler), PE prefills,
  KV flows PE -> DE layer by layer; PE --PrefillDone--> scheduler (tok_e bookkeeping);
  DE --Tokens--> scheduler (streamed to the client) ... --Finished--> scheduler.
  Either engine --TransferFailed--> scheduler when the KV between them did not get through.
"""

from __future__ import annotations

import msgspec


class Hello(msgspec.Struct, tag=True):
    """First message of an engine: who it is and where its data socket listens."""

    engine_id: int
    node_id: int
    role: str  # "prefill" | "decode"
    data_address: str
    kv_capacity_tokens: int
    pid: int
    prefill_tokens_per_s: float = 0.0  # profiled at start-up (prefill engines), for β


class EngineStats(msgspec.Struct, tag=True):
    """Periodic load report (the group leader's report of DESIGN.md section 3) + NIC counters."""

    engine_id: int
    seq: int
    tok: int
    free_kv_tokens: int
    read_queue_tokens: int
    counters: dict[str, float]


class AssignPrefill(msgspec.Struct, tag=True):
    request_id: str
    prompt_token_ids: list[int]
    hit_hashes: list[str]  # leading stored blocks to load (may shrink on read failure)
    read_path: str  # "pe" | "de"
    decode_engine: int
    decode_address: str
    layerwise: bool
    temperature: float
    top_p: float
    seed: int | None
    banned_first_token_ids: list[int]  # EOS while min_tokens > 0


class AssignDecode(msgspec.Struct, tag=True):
    request_id: str
    prompt_token_ids: list[int]
    hit_hashes: list[str]
    read_path: str
    prefill_engine: int
    prefill_address: str
    max_tokens: int
    min_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    ignore_eos: bool
    stop_token_ids: list[int]


class Abort(msgspec.Struct, tag=True):
    request_id: str


class Shutdown(msgspec.Struct, tag=True):
    pass


class PrefillDone(msgspec.Struct, tag=True):
    """PE finished a request's prefill (its tokens leave the PE's tok_e)."""

    engine_id: int
    request_id: str
    cached_tokens: int


class ReadDone(msgspec.Struct, tag=True):
    """An engine finished reading a request's hit blocks from storage (its node's read_q
    shrinks by `tokens`; `loaded_tokens` < `tokens` when blocks were missing or corrupt)."""

    engine_id: int
    request_id: str
    tokens: int
    loaded_tokens: int


class Tokens(msgspec.Struct, tag=True):
    """New tokens of a request, from its DE (the first one is the PE's sampled token)."""

    engine_id: int
    request_id: str
    token_ids: list[int]


class Finished(msgspec.Struct, tag=True):
    engine_id: int
    request_id: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    error: str | None = None


class TransferFailed(msgspec.Struct, tag=True):
    """An engine could not move a request attempt's data to or from its peer (a send failed, or
    the peer's KV never came). The engine has dropped the attempt; the scheduler re-runs the
    request or, past its retry budget, ends it with an error."""

    engine_id: int
    request_id: str
    peer_address: str
    error: str


ControlMessage = (
    Hello | EngineStats | AssignPrefill | AssignDecode | Abort | Shutdown | PrefillDone | ReadDone
    | Tokens | Finished | TransferFailed
)

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(ControlMessage)


def encode(msg: ControlMessage) -> bytes:
    return _encoder.encode(msg)


def decode(data: bytes) -> ControlMessage:
    return _decoder.decode(data)
