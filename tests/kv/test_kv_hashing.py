"""Block hashing: stable digests, chaining, model identity, complete blocks only."""

from __future__ import annotations

import hashlib
import struct
import subprocess
import sys

import numpy as np
import pytest

from dualpath.core.errors import UserInputError
from dualpath.kv.hashing import block_hashes

# Pinned: changing the encoding changes every stored block's name, so it must be deliberate.
PINNED_TOKENS = list(range(1, 9))
PINNED = [
    "428d01599acf6da061d15c03a5fcfeef8ecd3ba5cea9911e0554e4c7b30a718f",
    "d5de374fc59a3ebabc4ad851e6c0058c9aa84f1bd611ee97fdb10d2e1fc1888c",
]


def test_fixed_vector_has_fixed_digest() -> None:
    assert block_hashes(PINNED_TOKENS, 4, "model-a") == PINNED


def test_digest_follows_documented_encoding() -> None:
    """Recompute block 0 and 1 from the encoding in the module docstring, independently."""
    parent = bytes(32)
    identity = b"model-a"
    expected = []
    for block in (PINNED_TOKENS[:4], PINNED_TOKENS[4:]):
        blob = (b"dualpath-kv-block-v1\0" + parent + struct.pack("<I", len(identity)) + identity
                + struct.pack("<I", 4) + struct.pack("<4I", *block))
        parent = hashlib.sha256(blob).digest()
        expected.append(parent.hex())
    assert expected == PINNED


def test_stable_across_processes() -> None:
    code = "from dualpath.kv.hashing import block_hashes; print(block_hashes(list(range(1, 9)), 4, 'model-a'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "123", "PATH": ""})
    assert out.stdout.strip() == repr(PINNED)


def test_chain_continues_from_parent() -> None:
    tokens = list(range(100, 112))
    whole = block_hashes(tokens, 4, "m")
    first = block_hashes(tokens[:4], 4, "m")
    rest = block_hashes(tokens[4:], 4, "m", parent=first[-1])
    assert whole == first + rest
    # Same tokens under a different parent (or none) name different blocks.
    assert block_hashes(tokens[4:8], 4, "m") != [whole[1]]


def test_earlier_token_change_changes_every_later_hash() -> None:
    a = block_hashes(list(range(16)), 4, "m")
    b = block_hashes([99, *range(1, 16)], 4, "m")
    assert all(x != y for x, y in zip(a, b, strict=True))


def test_model_identity_changes_digest() -> None:
    assert block_hashes(PINNED_TOKENS, 4, "model-a") != block_hashes(PINNED_TOKENS, 4, "model-b")


def test_partial_last_block_not_hashed() -> None:
    assert len(block_hashes(list(range(11)), 4, "m")) == 2
    assert block_hashes(list(range(11)), 4, "m") == block_hashes(list(range(8)), 4, "m")
    assert block_hashes(list(range(3)), 4, "m") == []


def test_numpy_and_list_inputs_agree() -> None:
    tokens = list(range(50_000, 50_064))
    for dtype in (np.int64, np.int32, np.uint32):
        assert block_hashes(np.array(tokens, dtype=dtype), 16, "m") == block_hashes(tokens, 16, "m")


@pytest.mark.parametrize(
    ("tokens", "block_size", "identity", "parent"),
    [
        ([-1, 2], 1, "m", None),
        ([2**32], 1, "m", None),
        ([1, 2], 0, "m", None),
        ([1, 2], 1, "", None),
        ([1, 2], 1, "m", "not-hex"),
        ([1, 2], 1, "m", "abcd"),
    ],
)
def test_bad_inputs_rejected(tokens: list[int], block_size: int, identity: str, parent: str | None) -> None:
    with pytest.raises(UserInputError):
        block_hashes(tokens, block_size, identity, parent=parent)
