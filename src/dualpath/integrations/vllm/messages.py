"""The relay's messages between a prefill instance (P) and a decode instance (D), typed.

Every message names the request by the router's `key`. Payloads (numpy arrays) travel as
separate zero-copy frames next to the header; `payload_spec` says what each message must
carry, and `relay_link` rejects any frame whose header or payload does not match.

    P -> D  Prepare(key)                 DE path: "read the hit; tell me when it is in your buffer"
    D -> P  Ready(key)                   DE path: the hit is in D's buffer
    P -> D  HitPull(key)                 DE path: P's forward starts; stream the hit's layers
    D -> P  HitLayer(key, layer, tokens) + [tokens, bytes]: one layer of the hit
    P -> D  KvLayer(key, layer, start, tokens) + [tokens, bytes]: KV P holds for a token range
    both    Abort(key, reason)           give up on this request's relay (each side recomputes)

These are msgspec Structs in one module so they can move into `dualpath.wire` unchanged.
"""

from __future__ import annotations

import re

import msgspec

from dualpath.core.errors import TransferError

MAX_LAYERS = 4096
MAX_TOKENS = 1 << 24
_KEY_RE = re.compile(r"[0-9a-f]{8,64}")


class _Base(msgspec.Struct, frozen=True, tag_field="t", forbid_unknown_fields=True):
    key: str

    def validate(self) -> None:
        if not _KEY_RE.fullmatch(self.key):
            raise TransferError(f"relay message key {self.key!r} is not 8-64 hex chars")


class Prepare(_Base, frozen=True, tag="prepare"):
    pass


class Ready(_Base, frozen=True, tag="ready"):
    pass


class HitPull(_Base, frozen=True, tag="hit_pull"):
    pass


class HitLayer(_Base, frozen=True, tag="hit_layer"):
    layer: int
    num_tokens: int

    def validate(self) -> None:
        super().validate()
        _check_range("layer", self.layer, 0, MAX_LAYERS)
        _check_range("num_tokens", self.num_tokens, 1, MAX_TOKENS)


class KvLayer(_Base, frozen=True, tag="kv_layer"):
    layer: int
    start_token: int
    num_tokens: int

    def validate(self) -> None:
        super().validate()
        _check_range("layer", self.layer, 0, MAX_LAYERS)
        _check_range("start_token", self.start_token, 0, MAX_TOKENS)
        _check_range("num_tokens", self.num_tokens, 1, MAX_TOKENS)


class Abort(_Base, frozen=True, tag="abort"):
    reason: str

    def validate(self) -> None:
        super().validate()
        if len(self.reason) > 2000:
            raise TransferError("relay abort reason is longer than 2000 chars")


RelayMessage = Prepare | Ready | HitPull | HitLayer | KvLayer | Abort


def payload_arrays(msg: RelayMessage) -> int:
    """How many payload arrays `msg` carries (one KV array for layer messages, else none)."""
    return 1 if isinstance(msg, HitLayer | KvLayer) else 0


def payload_tokens(msg: RelayMessage) -> int:
    """Rows the payload must have: the message's token count (0 without payload)."""
    return msg.num_tokens if isinstance(msg, HitLayer | KvLayer) else 0


def _check_range(name: str, value: int, lo: int, hi: int) -> None:
    if not lo <= value < hi:
        raise TransferError(f"relay message field {name}={value} outside [{lo}, {hi})")
