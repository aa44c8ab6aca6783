"""The DualPath-on-vLLM relay between a prefill instance (P) and a decode instance (D).

Data-plane headers of `integrations.vllm` (the KV bytes travel as payload frames, uint8
`[tokens, bytes per token per layer]`):

    RelayReady     D -> P   DE path: the hit is in D's buffer
    RelayHitPull   P -> D   DE path: P's forward starts; stream the hit's layers
    RelayHitLayer  D -> P   + [hit tokens, B]: one layer of the hit
    RelayKvLayer   P -> D   + [n, B]: KV of prompt tokens [start_token, start_token + n) of a layer
    RelayAbort     both     give this request's relay up (each side recomputes)

Requests are named by the router's `key` (hex), not by an `AttemptId`: the two vLLM
instances know a request only by what the router put into its `kv_transfer_params`.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from dualpath.wire.types import Count, ErrorText, LayerIndex

RelayKey = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{8,64}$")]
RelayTokens = Annotated[int, msgspec.Meta(ge=1, le=1 << 24)]


class RelayReady(msgspec.Struct, tag=True, frozen=True):
    key: RelayKey


class RelayHitPull(msgspec.Struct, tag=True, frozen=True):
    key: RelayKey


class RelayHitLayer(msgspec.Struct, tag=True, frozen=True):
    key: RelayKey
    layer: LayerIndex
    num_tokens: RelayTokens


class RelayKvLayer(msgspec.Struct, tag=True, frozen=True):
    key: RelayKey
    layer: LayerIndex
    start_token: Count
    num_tokens: RelayTokens


class RelayAbort(msgspec.Struct, tag=True, frozen=True):
    key: RelayKey
    reason: ErrorText


RelayHeader = RelayReady | RelayHitPull | RelayHitLayer | RelayKvLayer | RelayAbort
