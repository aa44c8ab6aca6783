"""`ZmqTransport`: the TCP transport (pyzmq), zero-copy on both ends.

Wire format: one multipart message per `send`: frame 0 is the `wire.data.DataEnvelope` (sender,
class, typed header, shapes, dtypes), frames 1..N are the payload arrays, handed to zmq with
`copy=False` (zmq writes straight from the numpy memory) and rebuilt on the receiver with
`np.frombuffer` over the received frames (no copy). Each transport binds one PULL socket;
senders keep one PUSH socket per destination and traffic class (`IMMEDIATE`, so an
unreachable peer makes the send time out instead of queueing forever), marked with the class's
IP TOS so a kernel-shaped link can prioritise model traffic over KV (`nic.TOS_BY_CLASS`).

With `security` every connection is CURVE-authenticated and encrypted (`transfer.curve`): the
PULL socket is a CURVE server that admits only cluster members, each received `Message` carries
the sender's authenticated `peer`, and this transport's PUSH sockets connect with its own key. `send` waits on zmq's message tracker, so when
it returns zmq no longer reads the caller's buffers (after a send that timed out zmq may
still hold them and send them later: do not reuse those buffers).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import zmq

from dualpath.core.errors import TransferError
from dualpath.transfer.base import (
    Buffer,
    Message,
    Transport,
    encode_envelope,
    from_frames,
    to_arrays,
)
from dualpath.transfer.curve import ClusterKeys, Keypair, ZapHandler, make_client, make_server
from dualpath.transfer.inbox import Inbox
from dualpath.transfer.nic import TOS_BY_CLASS, Direction, EmulatedNic, TrafficClass
from dualpath.wire import FrameRejected, Rejections, decode_envelope
from dualpath.wire.data import DataHeader

log = logging.getLogger(__name__)

_POLL_MS = 100  # how often the receive thread checks for close()


@dataclass(frozen=True)
class DataSecurity:
    """CURVE for one engine's data plane: the cluster's keys and this engine's own pair.
    `allow(user)` filters authenticated members (default: every member)."""

    keys: ClusterKeys
    me: Keypair
    allow: Callable[[str], bool] = lambda user: True


class ZmqTransport(Transport):
    """Bind at `bind` (tcp://HOST:PORT; port 0 = any free port) and pace through `cnic`."""

    def __init__(
        self,
        bind: str = "tcp://127.0.0.1:0",
        *,
        cnic: EmulatedNic | None = None,
        send_timeout_s: float = 10.0,
        io_threads: int = 1,
        security: DataSecurity | None = None,
    ) -> None:
        self._cnic = cnic
        self._send_timeout_s = send_timeout_s
        self._security = security
        self.rejections = Rejections()
        self._ctx = zmq.Context(io_threads=io_threads)
        self._zap = (ZapHandler(self._ctx, security.keys, security.allow, self.rejections)
                     if security is not None else None)
        self._pull = self._ctx.socket(zmq.PULL)
        self._pull.setsockopt(zmq.LINGER, 0)
        if security is not None:
            make_server(self._pull, security.keys.data_server)
        if bind.endswith(":0"):
            bind = bind[:-2] + ":*"
        try:
            self._pull.bind(bind)
        except zmq.ZMQError as exc:
            self._pull.close(0)
            if self._zap is not None:
                self._zap.close()
            self._ctx.term()
            raise TransferError(f"cannot bind {bind}: {exc}") from exc
        self._address = self._pull.getsockopt_string(zmq.LAST_ENDPOINT)
        if self._zap is not None:
            self._zap.watch(self._pull)
        self._push: dict[tuple[str, TrafficClass], tuple[zmq.Socket[Any], threading.Lock]] = {}
        self._push_lock = threading.Lock()
        self._inbox = Inbox(cnic)
        self._stop = threading.Event()
        self._closed = False
        self._receiver = threading.Thread(target=self._receive_loop, daemon=True,
                                          name=f"zmq-recv {self._address}")
        self._receiver.start()

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
        envelope = encode_envelope(self._address, header, arrays, traffic_class)
        if self._cnic is not None:
            self._cnic.transmit(sum(a.nbytes for a in arrays), traffic_class, Direction.TX)
        timeout = self._send_timeout_s if timeout_s is None else timeout_s
        sock, lock = self._socket_for(dest, traffic_class)
        try:
            with lock:
                sock.setsockopt(zmq.SNDTIMEO, max(1, int(timeout * 1000)))
                frames: list[Any] = [envelope, *arrays]
                tracker = sock.send_multipart(frames, copy=False, track=True)
            if tracker is not None:
                tracker.wait(timeout)
        except zmq.Again as exc:
            raise TransferError(f"peer {dest} unreachable (no connection within {timeout:g} s)") from exc
        except zmq.NotDone as exc:
            raise TransferError(f"send to {dest} did not complete within {timeout:g} s") from exc
        except zmq.ZMQError as exc:
            raise TransferError(f"send to {dest} failed: {exc}") from exc

    def recv(self, timeout_s: float | None = None) -> Message | None:
        return self._inbox.get(timeout_s)

    def close(self) -> None:
        """Stop the receive thread, drop pending messages, close sockets (linger 0).

        Sends still in progress in other threads fail with TransferError."""
        with self._push_lock:
            if self._closed:
                return
            self._closed = True
        self._stop.set()
        self._receiver.join()
        self._inbox.close()
        with self._push_lock:
            for sock, lock in self._push.values():
                with lock:
                    sock.close(linger=0)
            self._push.clear()
        self._pull.close(linger=0)
        if self._zap is not None:
            self._zap.close()
        self._ctx.term()

    def _socket_for(self, dest: str,
                    klass: TrafficClass) -> tuple[zmq.Socket[Any], threading.Lock]:
        with self._push_lock:
            if self._closed:
                raise TransferError("send on a closed transport")
            entry = self._push.get((dest, klass))
            if entry is None:
                sock = self._ctx.socket(zmq.PUSH)
                sock.setsockopt(zmq.LINGER, 0)
                sock.setsockopt(zmq.IMMEDIATE, 1)
                sock.setsockopt(zmq.TOS, TOS_BY_CLASS[klass])
                if self._security is not None:
                    make_client(sock, self._security.me, self._security.keys.data_server.public)
                try:
                    sock.connect(dest)
                except zmq.ZMQError as exc:
                    sock.close(0)
                    raise TransferError(f"bad destination address {dest!r}: {exc}") from exc
                entry = (sock, threading.Lock())
                self._push[(dest, klass)] = entry
            return entry

    def _receive_loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self._pull, zmq.POLLIN)
        while not self._stop.is_set():
            try:
                if not poller.poll(_POLL_MS):
                    continue
                frames = self._pull.recv_multipart(copy=False)
            except zmq.ZMQError as exc:
                if self._stop.is_set():
                    return
                log.error("receive on %s failed: %s", self._address, exc)
                continue
            try:
                user = frames[0].get("User-Id") if self._security is not None else None
                peer = user if isinstance(user, str) else None
                envelope = decode_envelope(frames[0].buffer)
                message = from_frames(envelope, [f.buffer for f in frames[1:]], peer)
            except FrameRejected as exc:
                self.rejections.count(exc.reason)
                log.warning("dropping a frame on %s: %s", self._address, exc)
                continue
            self._inbox.deliver(message)
