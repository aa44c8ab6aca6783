"""The connector's only door to DualPath's transfer layer: the relay's typed messages over TCP.

`RelayLink` wraps one `ZmqTransport` (bound on the instance's relay address, paced by its
emulated CNIC) and speaks `dualpath.wire.relay` headers: the transport's validating decoder
checks every header (schema, bounds) before it reaches us; here we check what is ours — it
is a relay header, it carries the payload its kind needs (one uint8 `[num_tokens, bytes per
token per layer]` array for layer messages, none otherwise). A frame that fails is counted
(`rejections`, with the transport's own) and dropped; it never reaches the connector and
never stops the receive thread.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from dualpath.core.errors import TransferError
from dualpath.transfer.nic import EmulatedNic, TrafficClass
from dualpath.transfer.zmq_transport import ZmqTransport
from dualpath.wire.codec import Rejections
from dualpath.wire.relay import (
    RelayAbort,
    RelayHeader,
    RelayHitLayer,
    RelayHitPull,
    RelayKvLayer,
    RelayReady,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Received:
    """One validated relay message: who sent it, what it says, its KV payload (or None)."""

    sender: str
    message: RelayHeader
    payload: np.ndarray | None


def payload_tokens(message: RelayHeader) -> int:
    """Rows the payload of `message` must have (0: it carries no payload)."""
    return message.num_tokens if isinstance(message, RelayHitLayer | RelayKvLayer) else 0


class RelayLink:
    """Send and receive relay messages; thread safe (any thread may send)."""

    def __init__(self, bind: str, *, bytes_per_token: int, cnic: EmulatedNic | None = None,
                 send_timeout_s: float = 30.0) -> None:
        if bytes_per_token < 1:
            raise TransferError("RelayLink: bytes_per_token must be >= 1")
        self.bytes_per_token = bytes_per_token
        self._transport = ZmqTransport(bind, cnic=cnic, send_timeout_s=send_timeout_s)
        self._rejections = Rejections()

    @property
    def address(self) -> str:
        return self._transport.address

    @property
    def rejected(self) -> int:
        """Frames dropped, by the transport's decoder or by this link."""
        both = (self._transport.rejections.snapshot(), self._rejections.snapshot())
        return sum(sum(counts.values()) for counts in both)

    def send(self, dest: str, message: RelayHeader, payload: np.ndarray | None = None) -> None:
        """Send `message` (+ its KV payload) to the link bound at `dest`; TransferError on failure."""
        if (payload is None) != (payload_tokens(message) == 0):
            raise TransferError(f"{type(message).__name__} must carry "
                                f"{'a' if payload_tokens(message) else 'no'} KV payload")
        if payload is not None:
            self._check_payload(message, payload)
        self._transport.send(dest, message, () if payload is None else (payload,),
                             traffic_class=TrafficClass.KV)

    def recv(self, timeout_s: float | None = None) -> Received | None:
        """The next valid message, or None after `timeout_s`; invalid frames are skipped."""
        while True:
            raw = self._transport.recv(timeout_s)
            if raw is None:
                return None
            header = raw.header
            try:
                if not isinstance(header, RelayReady | RelayHitPull | RelayHitLayer
                                  | RelayKvLayer | RelayAbort):
                    raise TransferError(f"{type(header).__name__} is not a relay message")
                want = 1 if payload_tokens(header) else 0
                if len(raw.payload) != want:
                    raise TransferError(f"{type(header).__name__} came with "
                                        f"{len(raw.payload)} payload arrays, expected {want}")
                array = raw.payload[0] if raw.payload else None
                if array is not None:
                    self._check_payload(header, array)
            except TransferError as exc:
                self._rejections.count("relay")
                log.warning("relay %s: dropping a frame from %s: %s", self.address,
                            raw.sender, exc)
                continue
            return Received(sender=raw.sender, message=header, payload=array)

    def close(self) -> None:
        self._transport.close()

    def _check_payload(self, message: RelayHeader, array: np.ndarray) -> None:
        shape = (payload_tokens(message), self.bytes_per_token)
        if array.dtype != np.uint8 or tuple(array.shape) != shape:
            raise TransferError(f"{type(message).__name__} payload is {array.shape}/"
                                f"{array.dtype}, expected {shape}/uint8")
