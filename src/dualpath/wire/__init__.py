"""Every message between DualPath processes: typed, versioned, validated.

- `types`: bounded field types and `AttemptId` (the id of one attempt of one request).
- `control`: scheduler <-> engine control messages (`ToEngine`, `ToScheduler`).
- `data`: engine <-> engine data-plane headers (the KV bytes travel as payload frames) and
  the `DataEnvelope` that describes a message's payload frames.
- `codec`: the one `encode` and the validating decoders (`decode_to_engine`,
  `decode_to_scheduler`, `decode_envelope`); a bad frame raises `FrameRejected(reason)`.

Nothing outside this package builds or parses a frame. Imports only `core` and msgspec.
"""

from dualpath.wire.codec import (
    WIRE_VERSION,
    FrameRejected,
    Rejections,
    decode_envelope,
    decode_to_engine,
    decode_to_node,
    decode_to_scheduler,
    encode,
)
from dualpath.wire.types import AttemptId

__all__ = [
    "WIRE_VERSION",
    "AttemptId",
    "FrameRejected",
    "Rejections",
    "decode_envelope",
    "decode_to_engine",
    "decode_to_node",
    "decode_to_scheduler",
    "encode",
]
