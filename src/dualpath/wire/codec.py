"""The one encoder and the one validating decoder of every internal frame.

A frame is `b"DP"`, one version byte, then msgpack. Decoding checks the prefix and version,
then msgspec validates the whole message against its struct (types, bounds, enum values, the
right direction); anything else raises `FrameRejected` with a short `reason`, which the
receiving loop counts (`Rejections`) and drops — a bad frame never reaches engine logic and
never ends the loop that read it.
"""

from __future__ import annotations

import threading
from typing import TypeVar

import msgspec

from dualpath.core.errors import ProtocolError
from dualpath.wire.control import ToEngine, ToNode, ToScheduler
from dualpath.wire.data import DataEnvelope

WIRE_VERSION = 1
_PREFIX = b"DP" + bytes([WIRE_VERSION])

T = TypeVar("T")


class FrameRejected(ProtocolError):
    """A frame failed validation. `reason`: short, label-safe (a metric label)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


_encoder = msgspec.msgpack.Encoder()
_to_engine = msgspec.msgpack.Decoder(ToEngine)
_to_scheduler = msgspec.msgpack.Decoder(ToScheduler)
_to_node = msgspec.msgpack.Decoder(ToNode)
_envelope = msgspec.msgpack.Decoder(DataEnvelope)


def encode(msg: msgspec.Struct) -> bytes:
    """Frame any wire struct (control message or data envelope)."""
    return _PREFIX + _encoder.encode(msg)


def _decode(decoder: msgspec.msgpack.Decoder[T], data: bytes | memoryview) -> T:
    view = memoryview(data)
    if len(view) < len(_PREFIX):
        raise FrameRejected("short", f"{len(view)} bytes")
    if view[:2] != b"DP":
        raise FrameRejected("magic", "not a DualPath frame")
    if view[2] != WIRE_VERSION:
        raise FrameRejected("version", f"wire version {view[2]}, this build speaks "
                                       f"{WIRE_VERSION}")
    try:
        return decoder.decode(view[len(_PREFIX):])
    except msgspec.ValidationError as exc:
        raise FrameRejected("invalid", str(exc)) from None
    except msgspec.DecodeError as exc:
        raise FrameRejected("malformed", str(exc)) from None


def decode_to_engine(data: bytes | memoryview) -> ToEngine:
    """A scheduler -> engine control frame."""
    return _decode(_to_engine, data)


def decode_to_scheduler(data: bytes | memoryview) -> ToScheduler:
    """An engine -> scheduler control frame."""
    return _decode(_to_scheduler, data)


def decode_to_node(data: bytes | memoryview) -> ToNode:
    """A scheduler -> node agent control frame."""
    return _decode(_to_node, data)


def decode_envelope(data: bytes | memoryview) -> DataEnvelope:
    """Frame 0 of a data-plane message."""
    return _decode(_envelope, data)


class Rejections:
    """Frames a receiver dropped, by reason (thread safe; exported as
    `dualpath_internal_frames_rejected_total{reason}`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}

    def count(self, reason: str) -> None:
        with self._lock:
            self._counts[reason] = self._counts.get(reason, 0) + 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)
