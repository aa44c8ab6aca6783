"""Chained block hashes: the names under which Full Blocks of KV are stored and found.

A prompt is cut into blocks of `block_size` tokens; block i's hash covers block i-1's hash,
block i's token ids and the model identity. So one hash names a whole prefix (two prompts
share block i's hash only if they share all tokens up to the end of block i, under the same
model), which is what lets the prefix index answer "how many leading blocks are stored" by
looking hashes up one after another.

The scheme follows vLLM's prefix caching (`hash_block_tokens(parent_hash, token_ids,
extra_keys)` with a fixed root hash), with two choices made for a store shared by many
processes and machines:

- The digest is SHA-256 over a canonical byte encoding, never Python's salted `hash()` or
  pickle, so every process on every machine computes the same name for the same block.
- Encoding (all little-endian), per block::

      b"dualpath-kv-block-v1\\0" | parent digest (32 bytes; 32 zero bytes at the root)
      | uint32 len(model_identity) | model_identity (UTF-8) | uint32 block_size
      | block_size x uint32 token ids

  Every field has a fixed width or a length prefix, so no two different inputs encode to
  the same bytes.

Only complete blocks are hashed: a trailing partial block is not stored (its KV is
recomputed until the block fills up), exactly like the paper's 64-token persistence rule.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

import numpy as np

from dualpath.core.errors import UserInputError

DEFAULT_BLOCK_SIZE = 64
HASH_HEX_CHARS = 64  # SHA-256 hex digest length
_DOMAIN = b"dualpath-kv-block-v1\0"
_ROOT_PARENT = bytes(32)
_MAX_TOKEN_ID = 2**32 - 1


def block_hashes(
    token_ids: Sequence[int] | np.ndarray,
    block_size: int,
    model_identity: str,
    parent: str | None = None,
) -> list[str]:
    """Hex digests of the complete blocks of `token_ids`, chained from `parent`.

    `parent` is the hash of the block just before `token_ids[0]` (to continue a chain), or
    None when `token_ids` starts the prompt. Returns `len(token_ids) // block_size` digests;
    the tokens of a trailing partial block are ignored.
    """
    if block_size <= 0:
        raise UserInputError(f"block_size must be positive, got {block_size}")
    if not model_identity:
        raise UserInputError("model_identity must be a non-empty string")
    parent_bytes = _ROOT_PARENT if parent is None else _parent_digest(parent)
    tokens = _canonical_tokens(token_ids)
    num_blocks = len(tokens) // block_size
    if num_blocks == 0:
        return []
    identity = model_identity.encode("utf-8")
    prefix = _DOMAIN
    fixed = struct.pack("<I", len(identity)) + identity + struct.pack("<I", block_size)
    raw = tokens[: num_blocks * block_size].tobytes()
    stride = block_size * 4
    out: list[str] = []
    for i in range(num_blocks):
        h = hashlib.sha256(prefix)
        h.update(parent_bytes)
        h.update(fixed)
        h.update(raw[i * stride : (i + 1) * stride])
        parent_bytes = h.digest()
        out.append(parent_bytes.hex())
    return out


def _canonical_tokens(token_ids: Sequence[int] | np.ndarray) -> np.ndarray:
    """Token ids as a little-endian uint32 array, rejecting ids outside [0, 2**32)."""
    arr = np.asarray(token_ids)
    if arr.ndim != 1:
        raise UserInputError(f"token_ids must be one-dimensional, got shape {arr.shape}")
    if arr.size == 0:
        return np.zeros(0, dtype="<u4")
    if not np.issubdtype(arr.dtype, np.integer):
        raise UserInputError(f"token_ids must be integers, got dtype {arr.dtype}")
    if int(arr.min()) < 0 or int(arr.max()) > _MAX_TOKEN_ID:
        raise UserInputError("token ids must be in [0, 2**32)")
    return arr.astype("<u4", copy=False)


def _parent_digest(parent: str) -> bytes:
    try:
        raw = bytes.fromhex(parent)
    except ValueError:
        raise UserInputError(f"parent hash {parent!r} is not a hex string") from None
    if len(raw) != 32:
        raise UserInputError(
            f"parent hash must be {HASH_HEX_CHARS} hex chars (SHA-256), got {len(parent)}"
        )
    return raw
