"""Fast, machine-independent digests of checkpoint files (the `weights_id` of a ModelConfig).

Reading a whole multi-GB checkpoint to hash it would dominate start-up, so a file's digest
covers its size, its first MiB (the GGUF header / safetensors header with every tensor's name,
shape and offset) and its last MiB. Modification times are deliberately excluded so two
machines with the same file agree.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

_CHUNK_BYTES = 1 << 20


def file_digest(paths: Iterable[str | os.PathLike[str]], prefix: str) -> str:
    """`prefix-<16 hex>` over (name, size, head MiB, tail MiB) of each file, in the given order."""
    h = hashlib.blake2b(digest_size=8)
    for p in paths:
        path = Path(p)
        size = path.stat().st_size
        h.update(path.name.encode() + b"\0" + str(size).encode() + b"\0")
        with path.open("rb") as f:
            h.update(f.read(_CHUNK_BYTES))
            if size > _CHUNK_BYTES:
                f.seek(max(_CHUNK_BYTES, size - _CHUNK_BYTES))
                h.update(f.read(_CHUNK_BYTES))
    return f"{prefix}-{h.hexdigest()}"
