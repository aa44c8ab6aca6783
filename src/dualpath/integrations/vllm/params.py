"""The router's decision for one request, as it travels in vLLM's `kv_transfer_params`.

The router sends the same request to a prefill instance (P) and a decode instance (D), each
with `kv_transfer_params = {"dualpath": {...}}`. Both connectors parse it with
`DualPathParams.from_request_params`; a request without the `"dualpath"` key is served as
plain vLLM (the connector stays out of its way). Nothing here is trusted: every field is
type- and range-checked, and `check_prompt` verifies that the instance tokenized the
prompt exactly as the router did (same token count, same digest) before any KV moves.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from dualpath.core.errors import UserInputError

PARAMS_KEY = "dualpath"
Role = Literal["prefill", "decode"]
Side = Literal["pe", "de"]
_KEY_RE = re.compile(r"[0-9a-f]{8,64}")
_ADDR_RE = re.compile(r"tcp://[A-Za-z0-9.\-\[\]:]{1,200}:\d{1,5}")


class ParamsError(UserInputError):
    """`kv_transfer_params["dualpath"]` is malformed or does not match the request."""


def prompt_digest(token_ids: Sequence[int] | np.ndarray) -> str:
    """A short digest of a prompt's token ids (little-endian uint32), for cross-checks."""
    arr = np.asarray(token_ids, dtype="<u4")
    return hashlib.blake2b(arr.tobytes(), digest_size=8).hexdigest()


@dataclass(frozen=True)
class DualPathParams:
    """What P and D need to agree on for one request.

    key: the router's id of the request, shared by P and D (hex); relay messages carry it.
    role: which instance this copy is for ("prefill" or "decode").
    read_side: "pe" (P reads the hit from storage) or "de" (D reads it and relays it to P).
    hit_tokens: leading prompt tokens whose KV is loaded from storage (whole blocks, and
        fewer than the prompt: at least one token is always computed).
    prompt_tokens / digest: the prompt as the router tokenized it.
    peer: the relay address (tcp://host:port) of the other instance.
    """

    key: str
    role: Role
    read_side: Side
    hit_tokens: int
    prompt_tokens: int
    digest: str
    peer: str

    def __post_init__(self) -> None:
        if not isinstance(self.key, str) or not _KEY_RE.fullmatch(self.key):
            raise ParamsError(f"dualpath.key must be 8-64 lowercase hex chars, got {self.key!r}")
        if self.role not in ("prefill", "decode"):
            raise ParamsError(f"dualpath.role must be 'prefill' or 'decode', got {self.role!r}")
        if self.read_side not in ("pe", "de"):
            raise ParamsError(f"dualpath.read_side must be 'pe' or 'de', got {self.read_side!r}")
        for name in ("hit_tokens", "prompt_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ParamsError(f"dualpath.{name} must be a non-negative int, got {value!r}")
        if self.prompt_tokens < 1 or self.hit_tokens >= self.prompt_tokens:
            raise ParamsError(
                f"dualpath.hit_tokens ({self.hit_tokens}) must be < prompt_tokens "
                f"({self.prompt_tokens}) and the prompt non-empty"
            )
        if not isinstance(self.digest, str) or not re.fullmatch(r"[0-9a-f]{16}", self.digest):
            raise ParamsError(f"dualpath.digest must be 16 hex chars, got {self.digest!r}")
        if not isinstance(self.peer, str) or not _ADDR_RE.fullmatch(self.peer):
            raise ParamsError(f"dualpath.peer must be tcp://host:port, got {self.peer!r}")

    def hit_blocks(self, block_tokens: int) -> int:
        return self.hit_tokens // block_tokens

    def check_blocks(self, block_tokens: int) -> None:
        if self.hit_tokens % block_tokens:
            raise ParamsError(f"dualpath.hit_tokens ({self.hit_tokens}) is not a multiple of "
                              f"the block size {block_tokens}")

    def check_prompt(self, token_ids: Sequence[int] | np.ndarray) -> None:
        """Raise ParamsError unless `token_ids` is the prompt the router decided for."""
        if len(token_ids) != self.prompt_tokens:
            raise ParamsError(f"request {self.key}: prompt has {len(token_ids)} tokens here, "
                              f"{self.prompt_tokens} at the router (tokenization differs)")
        if prompt_digest(token_ids) != self.digest:
            raise ParamsError(f"request {self.key}: prompt token ids differ from the router's")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def request_params(self) -> dict[str, Any]:
        """The `kv_transfer_params` value to put into a vLLM request body."""
        return {PARAMS_KEY: self.to_dict()}

    @classmethod
    def from_request_params(cls, params: Mapping[str, Any] | None) -> DualPathParams | None:
        """Parse a request's `kv_transfer_params`; None when it has no "dualpath" entry."""
        if params is None:
            return None
        if not isinstance(params, Mapping):
            raise ParamsError("kv_transfer_params must be an object")
        raw = params.get(PARAMS_KEY)
        if raw is None:
            return None
        if not isinstance(raw, Mapping):
            raise ParamsError(f"kv_transfer_params.{PARAMS_KEY} must be an object")
        names = ("key", "role", "read_side", "hit_tokens", "prompt_tokens", "digest", "peer")
        missing = [n for n in names if n not in raw]
        if missing:
            raise ParamsError(f"kv_transfer_params.{PARAMS_KEY} lacks {', '.join(missing)}")
        return cls(**{n: raw[n] for n in names})
