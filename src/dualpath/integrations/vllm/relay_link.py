"""The connector's only door to DualPath's transfer layer: typed relay messages over zmq/TCP.

`RelayLink` wraps one `ZmqTransport` (bound on the instance's relay address, paced by its
emulated CNIC) and speaks `messages.RelayMessage`: the header dict carries the msgspec
message under one key, the payload frames carry the KV bytes. Every received frame is
validated here — header schema, field ranges, payload count, dtype and shape against the
KV bytes per token — and a frame that fails is logged, counted and dropped; it never
reaches the connector and never stops the receive thread.

When `dualpath.wire` lands, this module and `messages` are the two files to move.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np

from dualpath.core.errors import TransferError
from dualpath.integrations.vllm.messages import (
    RelayMessage,
    payload_arrays,
    payload_tokens,
)
from dualpath.transfer.nic import EmulatedNic, TrafficClass
from dualpath.transfer.zmq_transport import ZmqTransport

log = logging.getLogger(__name__)

_HEADER_KEY = "dualpath.relay"


@dataclass(frozen=True)
class Received:
    """One validated relay message: who sent it, what it says, its KV payload (or None)."""

    sender: str
    message: RelayMessage
    payload: np.ndarray | None


class RelayLink:
    """Send and receive relay messages; thread safe (any thread may send)."""

    def __init__(self, bind: str, *, bytes_per_token: int, cnic: EmulatedNic | None = None,
                 send_timeout_s: float = 30.0) -> None:
        if bytes_per_token < 1:
            raise TransferError("RelayLink: bytes_per_token must be >= 1")
        self.bytes_per_token = bytes_per_token
        self._transport = ZmqTransport(bind, cnic=cnic, send_timeout_s=send_timeout_s)
        self._lock = threading.Lock()
        self.rejected = 0  # frames dropped by validation

    @property
    def address(self) -> str:
        return self._transport.address

    def send(self, dest: str, message: RelayMessage,
             payload: np.ndarray | None = None) -> None:
        """Send `message` (+ its KV payload) to the link bound at `dest`; TransferError on failure."""
        want = payload_arrays(message)
        arrays: Sequence[np.ndarray] = () if payload is None else (payload,)
        if len(arrays) != want:
            raise TransferError(f"{type(message).__name__} carries {want} payload arrays, "
                                f"got {len(arrays)}")
        if payload is not None:
            self._check_payload(message, payload)
        header = {_HEADER_KEY: msgspec.to_builtins(message)}
        self._transport.send(dest, header, arrays, traffic_class=TrafficClass.KV)

    def recv(self, timeout_s: float | None = None) -> Received | None:
        """The next valid message, or None after `timeout_s`; invalid frames are skipped."""
        while True:
            raw = self._transport.recv(timeout_s)
            if raw is None:
                return None
            try:
                return self._decode(raw.sender, raw.header, raw.payload)
            except TransferError as exc:
                with self._lock:
                    self.rejected += 1
                log.warning("relay %s: dropping a frame from %s: %s", self.address,
                            raw.sender, exc)

    def close(self) -> None:
        self._transport.close()

    def _decode(self, sender: str, header: dict[str, Any],
                payload: list[np.ndarray]) -> Received:
        if set(header) != {_HEADER_KEY}:
            raise TransferError(f"unexpected header keys {sorted(header)[:5]}")
        try:
            message: RelayMessage = msgspec.convert(header[_HEADER_KEY], RelayMessage)
        except msgspec.ValidationError as exc:
            raise TransferError(f"malformed relay header: {exc}") from None
        message.validate()
        if len(payload) != payload_arrays(message):
            raise TransferError(f"{type(message).__name__} came with {len(payload)} payload "
                                f"arrays, expected {payload_arrays(message)}")
        array = payload[0] if payload else None
        if array is not None:
            self._check_payload(message, array)
        return Received(sender=sender, message=message, payload=array)

    def _check_payload(self, message: RelayMessage, array: np.ndarray) -> None:
        shape = (payload_tokens(message), self.bytes_per_token)
        if array.dtype != np.uint8 or tuple(array.shape) != shape:
            raise TransferError(f"{type(message).__name__} payload is {array.shape}/"
                                f"{array.dtype}, expected {shape}/uint8")
