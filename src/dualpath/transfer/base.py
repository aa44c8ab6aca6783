"""The transfer interface: move a header plus numpy payload buffers to another engine.

A `Transport` is one engine's endpoint. `send` delivers one message (a typed header from
`dualpath.wire.data` and zero or more numpy arrays, e.g. the Layer Blocks of one layer) to the
transport listening at `dest`; the receiver gets it from `recv` as a `Message`. Frames are
built and validated by `dualpath.wire` only; a frame that fails validation is dropped and
counted in the transport's `rejections`. That is the
whole interface, so engine tests can use `LocalTransport` (in-process) and production uses
`ZmqTransport` (TCP, zero-copy frames) or `MooncakeTransport` (RDMA, where installed).

Bandwidth: every transport may own its engine's CNIC (`EmulatedNic`). A send is paced on
the sender's CNIC TX lane in the message's traffic class before the bytes leave; a receive
is paced on the receiver's CNIC RX lane, cut-through (the reservation may start up to one
message-time before arrival), so a transfer runs at the slower end's rate and an incast of
several senders into one engine is limited by that engine's CNIC. All GPU traffic goes
through the GPU's own CNIC, as in DualPath.

Errors: every backend failure is raised as `dualpath.core.errors.TransferError`.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

import msgspec
import numpy as np

from dualpath import wire
from dualpath.core.errors import TransferError
from dualpath.transfer.nic import TrafficClass
from dualpath.wire.codec import FrameRejected, Rejections
from dualpath.wire.data import DataEnvelope, DataHeader

Buffer = np.ndarray | memoryview | bytes | bytearray


@dataclass(frozen=True)
class Message:
    """One received message.

    payload: the arrays in the order they were sent, same shapes and dtypes. With
    `ZmqTransport` they are writable views over the received frames (no copy); they stay
    valid as long as you hold them.
    peer: who the connection authenticated the sender as ("engine:<id>"), None without
    authentication (in-process test transports). `sender` is only what the sender claims.
    """

    sender: str
    header: DataHeader
    payload: list[np.ndarray]
    traffic_class: TrafficClass
    nbytes: int
    peer: str | None = None


class Transport(abc.ABC):
    """One engine's endpoint. Thread safe: any thread may send; any thread may recv.

    `rejections` counts received frames dropped by the validating decoder, by reason.
    """

    rejections: Rejections

    @property
    @abc.abstractmethod
    def address(self) -> str:
        """The address peers pass to `send` to reach this transport (e.g. tcp://host:port)."""

    @abc.abstractmethod
    def send(
        self,
        dest: str,
        header: DataHeader,
        payload: Sequence[Buffer] = (),
        *,
        traffic_class: TrafficClass = TrafficClass.KV,
        timeout_s: float | None = None,
    ) -> None:
        """Send one message; return when the payload buffers may be reused by the caller.

        Blocks while the sender's CNIC paces the bytes. Raises TransferError when `dest`
        cannot be reached within `timeout_s` (default: the transport's send timeout).
        """

    @abc.abstractmethod
    def recv(self, timeout_s: float | None = None) -> Message | None:
        """The next received message, or None after `timeout_s` (None = wait forever)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop threads and release sockets; idempotent. Pending messages are dropped."""

    def __enter__(self) -> Transport:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def to_arrays(payload: Sequence[Buffer]) -> list[np.ndarray]:
    """Payload buffers as C-contiguous numpy arrays (copies only non-contiguous arrays)."""
    arrays: list[np.ndarray] = []
    for item in payload:
        if isinstance(item, np.ndarray):
            arrays.append(np.ascontiguousarray(item))
        elif isinstance(item, bytes | bytearray | memoryview):
            arrays.append(np.frombuffer(item, dtype=np.uint8))
        else:
            raise TransferError(f"payload items must be numpy arrays or buffers, not {type(item).__name__}")
    return arrays


def encode_envelope(sender: str, header: DataHeader, arrays: Sequence[np.ndarray],
                    traffic_class: TrafficClass) -> bytes:
    """Frame 0 of a message whose payload frames are `arrays`."""
    try:
        return wire.encode(DataEnvelope(
            sender=sender, traffic_class=int(traffic_class), header=header,
            shapes=[list(a.shape) for a in arrays], dtypes=[a.dtype.str for a in arrays]))
    except (TypeError, msgspec.EncodeError) as exc:
        raise TransferError(f"header cannot be encoded: {exc}") from exc


def from_frames(envelope: DataEnvelope, buffers: Sequence[memoryview | bytes],
                peer: str | None = None) -> Message:
    """Rebuild the payload arrays over the received buffers without copying; a payload that
    does not match its envelope raises `FrameRejected("frames")`."""
    if len(buffers) != len(envelope.shapes) or len(envelope.dtypes) != len(envelope.shapes):
        raise FrameRejected("frames", f"message has {len(buffers)} payload frames, envelope "
                                      f"says {len(envelope.shapes)}")
    arrays = []
    for buf, shape, dtype in zip(buffers, envelope.shapes, envelope.dtypes, strict=True):
        try:
            arrays.append(np.frombuffer(buf, dtype=np.dtype(dtype)).reshape(shape))
        except (TypeError, ValueError) as exc:
            raise FrameRejected("frames", f"payload frame does not match its shape "
                                          f"{shape}/{dtype}: {exc}") from None
    return Message(
        sender=envelope.sender,
        header=envelope.header,
        payload=arrays,
        traffic_class=TrafficClass(envelope.traffic_class),
        nbytes=sum(a.nbytes for a in arrays),
        peer=peer,
    )
