"""`LocalTransport`: an in-process transport, the test double of `Transport`.

Transports created with the same `LocalHub` reach each other by address ("local://NAME");
payload arrays are passed by reference after the same CNIC pacing as the TCP transport, so
engine logic can be tested without sockets. The receiver gets the sender's arrays: a sender
must not modify them after `send` returns (the same contract holds for every transport once
a buffer has been handed over).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Sequence

from dualpath.core.errors import TransferError
from dualpath.transfer.base import Buffer, Message, Transport, to_arrays
from dualpath.transfer.inbox import Inbox
from dualpath.transfer.nic import Direction, EmulatedNic, TrafficClass
from dualpath.wire import Rejections
from dualpath.wire.data import DataHeader


class LocalHub:
    """The address book of in-process transports."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._members: dict[str, LocalTransport] = {}
        self._ids = itertools.count()

    def _join(self, transport: LocalTransport, name: str | None) -> str:
        with self._lock:
            address = f"local://{name if name is not None else next(self._ids)}"
            if address in self._members:
                raise TransferError(f"address {address} is already in use")
            self._members[address] = transport
            return address

    def _leave(self, address: str) -> None:
        with self._lock:
            self._members.pop(address, None)

    def _lookup(self, address: str) -> LocalTransport:
        with self._lock:
            member = self._members.get(address)
        if member is None:
            raise TransferError(f"peer {address} unreachable (no such local transport)")
        return member


class LocalTransport(Transport):
    """One endpoint on a `LocalHub`; `name` picks the address (default: a fresh number)."""

    def __init__(self, hub: LocalHub, name: str | None = None, *,
                 cnic: EmulatedNic | None = None) -> None:
        self._hub = hub
        self._cnic = cnic
        self._inbox = Inbox(cnic)
        self.rejections = Rejections()  # nothing is decoded in-process; stays empty
        self._address = hub._join(self, name)
        self._closed = False

    @property
    def address(self) -> str:
        return self._address

    def send(
        self,
        dest: str,
        header: DataHeader,
        payload: Sequence[Buffer] = (),
        *,
        traffic_class: TrafficClass = TrafficClass.KV,
        timeout_s: float | None = None,
    ) -> None:
        if self._closed:
            raise TransferError("send on a closed transport")
        arrays = to_arrays(payload)
        peer = self._hub._lookup(dest)
        nbytes = sum(a.nbytes for a in arrays)
        if self._cnic is not None:
            self._cnic.transmit(nbytes, traffic_class, Direction.TX)
        peer._inbox.deliver(Message(self._address, header, arrays, traffic_class, nbytes))

    def recv(self, timeout_s: float | None = None) -> Message | None:
        return self._inbox.get(timeout_s)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._hub._leave(self._address)
        self._inbox.close()
