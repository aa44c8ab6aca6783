"""Data-plane message headers (engine to engine, with the KV bytes as payload frames).

Payloads are uint8 arrays in the Full/Layer Block byte layout (`[tokens, bytes per token per
layer]` per layer, see `kv.layout`).

    HitReady       DE -> PE   DE path: the reads are done, `hit_tokens` of hit KV will come
    HitLayer       DE -> PE   + each hit block's layer `layer` (one array per block)
    KvLayer        PE -> DE   + [n, B] of layer `layer`, for prompt tokens [start, start+n)
    PrefillResult  PE -> DE   the first sampled token; the prefill is over
    PrefillFailed  PE -> DE   the prefill failed; the DE ends the attempt with an error
    Probe          any        benchmarks and transport tests (no meaning to engines)

plus the Mooncake transport's own Alloc / Grant / Data / Abort on its control plane.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from dualpath.wire.types import Address, AttemptId, Count, ErrorText, LayerIndex, TokenId

_MAX_FRAMES = 1 << 16  # payload arrays per message (a layer of a 1M-token prefix is 16K blocks)
_MAX_DIMS = 8


class HitReady(msgspec.Struct, tag=True, frozen=True):
    attempt: AttemptId
    hit_tokens: Count


class HitLayer(msgspec.Struct, tag=True, frozen=True):
    attempt: AttemptId
    layer: LayerIndex


class KvLayer(msgspec.Struct, tag=True, frozen=True):
    attempt: AttemptId
    layer: LayerIndex
    start: Count
    n: Count


class PrefillResult(msgspec.Struct, tag=True, frozen=True):
    attempt: AttemptId
    first_token: TokenId
    prompt_tokens: Count
    cached_tokens: Count


class PrefillFailed(msgspec.Struct, tag=True, frozen=True):
    attempt: AttemptId
    error: ErrorText


class Probe(msgspec.Struct, tag=True, frozen=True):
    seq: Annotated[int, msgspec.Meta(ge=0)] = 0


KvHeader = HitReady | HitLayer | KvLayer | PrefillResult | PrefillFailed | Probe
"""What engines send each other (`Transport.send`)."""

Dim = Annotated[int, msgspec.Meta(ge=0, le=2**40)]
DtypeName = Annotated[str, msgspec.Meta(pattern="^[<>|=]?[iuf][1248]$")]
Shapes = Annotated[list[Annotated[list[Dim], msgspec.Meta(max_length=_MAX_DIMS)]],
                   msgspec.Meta(max_length=_MAX_FRAMES)]
Dtypes = Annotated[list[DtypeName], msgspec.Meta(max_length=_MAX_FRAMES)]
Bytes = Annotated[int, msgspec.Meta(ge=0, le=2**48)]


# The Mooncake transport's own messages on its zmq control plane (transfer.mooncake_transport):
# the payload goes by one-sided write into a region of the receiver's arena.
class MooncakeAlloc(msgspec.Struct, tag=True, frozen=True):
    id: Bytes
    nbytes: Bytes


class MooncakeGrant(msgspec.Struct, tag=True, frozen=True):
    id: Bytes
    offset: Annotated[int, msgspec.Meta(ge=-1, le=2**48)]  # -1: no room now
    session: Address
    base: Bytes


class MooncakeData(msgspec.Struct, tag=True, frozen=True):
    header: KvHeader
    traffic_class: Annotated[int, msgspec.Meta(ge=0, le=1)]
    shapes: Shapes
    dtypes: Dtypes
    offsets: Annotated[list[Bytes], msgspec.Meta(max_length=_MAX_FRAMES)]
    start: Bytes
    nbytes: Bytes


class MooncakeAbort(msgspec.Struct, tag=True, frozen=True):
    start: Bytes
    nbytes: Bytes


DataHeader = KvHeader | MooncakeAlloc | MooncakeGrant | MooncakeData | MooncakeAbort


class DataEnvelope(msgspec.Struct, frozen=True, array_like=True):
    """Frame 0 of every data-plane message; frames 1..N are the payload arrays it describes."""

    sender: Address
    traffic_class: Annotated[int, msgspec.Meta(ge=0, le=1)]  # transfer.nic.TrafficClass
    header: DataHeader
    shapes: Shapes
    dtypes: Dtypes


_KINDS = {HitReady: "hit_ready", HitLayer: "hit_layer", KvLayer: "kv_layer",
          PrefillResult: "prefill_result", PrefillFailed: "prefill_failed", Probe: "probe"}


def kind_of(header: KvHeader) -> str:
    """The header's short name ("kv_layer", ...): log lines and chaos-drill selectors."""
    return _KINDS.get(type(header), type(header).__name__)
