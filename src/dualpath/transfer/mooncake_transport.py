"""`MooncakeTransport`: payload bytes moved by Mooncake's transfer engine (RDMA where present).

Optional backend, used when `mooncake` is importable. Enable it with

    pip install mooncake-transfer-engine-non-cuda==0.3.13.post1
    apt-get install libibverbs1          # the wheel links libibverbs.so.1 even for TCP

and construct `MooncakeTransport(protocol="rdma", device_name="mlx5_0")` on RDMA hosts
(`protocol="tcp"` works anywhere and is what the tests use). `mooncake_available()` says
whether it can be used here. Engines use it with `dualpath serve --transfer mooncake`.

Security: with `security` the control plane is CURVE (authenticated and encrypted, the
sender's identity on every message, as with `ZmqTransport`), so only cluster members get
grants and only their "data" messages deliver a region. The payload itself is Mooncake's: it
is neither encrypted nor authenticated, and Mooncake's own port accepts writes into registered
memory from whoever reaches it. On TCP it crosses the compute network in the clear. Use it on
a compute network only cluster hosts can reach (as RDMA fabrics are), or keep the default zmq
transport.

How a send works (the same `Transport` interface as `ZmqTransport`):

1. The control plane is a `ZmqTransport` (addresses are its tcp:// addresses). The sender
   asks the receiver for room ("alloc"); the receiver carves it from its *arena*, a numpy
   buffer registered with Mooncake once, and answers with its Mooncake session and the
   remote address ("grant"). A full arena answers "no room" and the sender retries until
   its timeout.
2. The sender paces the bytes on its CNIC (TX), then Mooncake writes the payload arrays
   straight from their memory into the granted region (one-sided write; arrays that are not
   inside a region registered with `register` are registered for the duration of the send).
3. The sender posts "data" (header, shapes, dtypes, offsets) on the control plane; the
   receiver delivers a `Message` whose arrays are views into its arena (no copy). The
   region returns to the arena when the last of those arrays is garbage-collected.
"""

from __future__ import annotations

import ctypes
import itertools
import logging
import os
import threading
import time
import weakref
from collections.abc import Sequence
from typing import Any, cast

import numpy as np

from dualpath.core.errors import ConfigError, TransferError
from dualpath.transfer.arena import ALIGN, Arena
from dualpath.transfer.base import Buffer, Message, Transport, to_arrays
from dualpath.transfer.inbox import Inbox
from dualpath.transfer.nic import Direction, EmulatedNic, TrafficClass
from dualpath.transfer.zmq_transport import DataSecurity, ZmqTransport
from dualpath.wire import FrameRejected
from dualpath.wire.data import (
    KvHeader,
    MooncakeAbort,
    MooncakeAlloc,
    MooncakeData,
    MooncakeGrant,
)

log = logging.getLogger(__name__)


def _quiet_glog() -> None:
    # Mooncake logs every connection at INFO through glog; keep warnings and errors only
    # unless the user set their own level (read when the library loads).
    os.environ.setdefault("GLOG_minloglevel", "1")


def mooncake_available() -> bool:
    """Whether the Mooncake transfer engine can be imported here (wheel + libibverbs)."""
    _quiet_glog()
    try:
        from mooncake.engine import TransferEngine  # noqa: F401
    except ImportError:
        return False
    return True


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


class MooncakeTransport(Transport):
    """Control over zmq at `bind`, payload via Mooncake into the receiver's arena."""

    def __init__(
        self,
        bind: str = "tcp://127.0.0.1:0",
        *,
        cnic: EmulatedNic | None = None,
        protocol: str = "tcp",
        device_name: str = "",
        hostname: str = "127.0.0.1",
        arena_bytes: int = 256 * 1024 * 1024,
        send_timeout_s: float = 10.0,
        security: DataSecurity | None = None,
    ) -> None:
        _quiet_glog()
        try:
            from mooncake.engine import TransferEngine
        except ImportError as exc:
            raise ConfigError(
                "the Mooncake backend needs `pip install mooncake-transfer-engine-non-cuda` "
                f"and libibverbs1 ({exc})") from exc
        self._cnic = cnic
        self._send_timeout_s = send_timeout_s
        self._engine = TransferEngine()
        if self._engine.initialize(hostname, "P2PHANDSHAKE", protocol, device_name) != 0:
            raise TransferError(f"Mooncake transfer engine failed to start ({protocol} on {hostname})")
        self._session = f"{hostname}:{self._engine.get_rpc_port()}"
        self._arena = Arena(arena_bytes)
        self._registered: list[tuple[int, int]] = []
        self._write_lock = threading.Lock()
        self.register(self._arena.buffer)
        self._control = ZmqTransport(bind, send_timeout_s=send_timeout_s, security=security)
        self._inbox = Inbox(cnic)
        self._ids = itertools.count()
        self._grants: dict[int, tuple[threading.Event, list[MooncakeGrant]]] = {}
        self._grants_lock = threading.Lock()
        self._stop = threading.Event()
        self._closed = False
        self.payload_bytes_sent = 0  # bytes Mooncake wrote into peers' arenas
        self._dispatcher = threading.Thread(target=self._dispatch, daemon=True,
                                            name=f"mooncake-ctl {self.address}")
        self._dispatcher.start()

    @property
    def rejections(self) -> Any:  # type: ignore[override]
        return self._control.rejections

    @property
    def address(self) -> str:
        return self._control.address

    def register(self, array: np.ndarray) -> None:
        """Register a long-lived buffer (e.g. an engine's host buffer) so that sends from
        arrays inside it need no per-send registration. Keep `array` alive meanwhile."""
        if self._engine.register_memory(array.ctypes.data, array.nbytes) != 0:
            raise TransferError("Mooncake could not register memory")
        self._registered.append((array.ctypes.data, array.nbytes))

    def send(
        self,
        dest: str,
        header: KvHeader,  # type: ignore[override]
        payload: Sequence[Buffer] = (),
        *,
        traffic_class: TrafficClass = TrafficClass.KV,
        timeout_s: float | None = None,
    ) -> None:
        if self._closed:
            raise TransferError("send on a closed transport")
        timeout = self._send_timeout_s if timeout_s is None else timeout_s
        arrays = to_arrays(payload)
        offsets, total = [], 0
        for a in arrays:
            offsets.append(total)
            total += _aligned(a.nbytes)
        nbytes = sum(a.nbytes for a in arrays)
        start = 0
        if total:
            grant = self._request_grant(dest, total, time.monotonic() + timeout)
            start = grant.offset
            if self._cnic is not None:
                self._cnic.transmit(nbytes, traffic_class, Direction.TX)
            try:
                self._write(grant, arrays, offsets)
                self.payload_bytes_sent += nbytes
            except TransferError:
                self._control.send(dest, MooncakeAbort(grant.offset, total), timeout_s=timeout)
                raise
        self._control.send(dest, MooncakeData(
            header, int(traffic_class), [list(a.shape) for a in arrays],
            [a.dtype.str for a in arrays], offsets, start, total), timeout_s=timeout)

    def recv(self, timeout_s: float | None = None) -> Message | None:
        return self._inbox.get(timeout_s)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._dispatcher.join()
        self._control.close()
        self._inbox.close()
        # The arena stays allocated while received arrays still view it (they reference it).

    def _request_grant(self, dest: str, nbytes: int, deadline: float) -> MooncakeGrant:
        backoff_s = 0.001
        while True:
            request_id = next(self._ids)
            event = threading.Event()
            reply: list[MooncakeGrant] = []
            with self._grants_lock:
                self._grants[request_id] = (event, reply)
            try:
                self._control.send(dest, MooncakeAlloc(request_id, nbytes),
                                   timeout_s=max(0.001, deadline - time.monotonic()))
                if not event.wait(max(0.0, deadline - time.monotonic())):
                    raise TransferError(f"peer {dest} did not answer an allocation request in time")
            finally:
                with self._grants_lock:
                    self._grants.pop(request_id, None)
            if reply[0].offset >= 0:
                return reply[0]
            if time.monotonic() + backoff_s > deadline:
                raise TransferError(f"peer {dest} has no room for {nbytes} bytes (receive arena full)")
            time.sleep(backoff_s)
            backoff_s = min(0.05, backoff_s * 2)

    def _write(self, grant: MooncakeGrant, arrays: list[np.ndarray], offsets: list[int]) -> None:
        sources, targets, lengths = [], [], []
        ranges: list[tuple[int, int]] = []
        for a, offset in zip(arrays, offsets, strict=True):
            if a.nbytes == 0:
                continue
            ptr = a.ctypes.data
            sources.append(ptr)
            targets.append(grant.base + grant.offset + offset)
            lengths.append(a.nbytes)
            if not any(lo <= ptr and ptr + a.nbytes <= lo + n for lo, n in self._registered):
                ranges.append((ptr, ptr + a.nbytes))
        # Payload memory outside registered buffers is registered for this write only; the
        # same memory cannot be registered twice, so overlapping ranges are merged and
        # writes from one transport are serialised.
        merged: list[list[int]] = []
        for lo, hi in sorted(ranges):
            if merged and lo < merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], hi)
            else:
                merged.append([lo, hi])
        with self._write_lock:
            registered = []
            try:
                for lo, hi in merged:
                    if self._engine.register_memory(lo, hi - lo) != 0:
                        raise TransferError("Mooncake could not register a payload buffer")
                    registered.append(lo)
                rc = self._engine.batch_transfer_sync_write(grant.session, sources, targets, lengths)
            finally:
                for lo in registered:
                    self._engine.unregister_memory(lo)
        if rc != 0:
            raise TransferError(f"Mooncake write to {grant.session} failed (code {rc})")

    def _dispatch(self) -> None:
        while not self._stop.is_set():
            message = self._control.recv(timeout_s=0.1)
            if message is None:
                continue
            h = message.header
            try:
                if isinstance(h, MooncakeAlloc):
                    offset = self._arena.alloc(h.nbytes)
                    self._control.send(message.sender, MooncakeGrant(
                        h.id, -1 if offset is None else offset, self._session,
                        self._arena.address))
                elif isinstance(h, MooncakeGrant):
                    with self._grants_lock:
                        waiter = self._grants.get(h.id)
                    if waiter is not None:
                        waiter[1].append(h)
                        waiter[0].set()
                elif isinstance(h, MooncakeData):
                    self._inbox.deliver(self._received(message.sender, h, message.peer))
                elif isinstance(h, MooncakeAbort):
                    self._check_region(h.start, h.nbytes)
                    self._arena.free(h.start, h.nbytes)
                else:
                    raise FrameRejected("unexpected", type(h).__name__)
            except FrameRejected as exc:
                self._control.rejections.count(exc.reason)
                log.warning("dropping a control frame from %s: %s", message.sender, exc)
            except TransferError as exc:
                log.error("bad control message from %s: %s", message.sender, exc)

    def _check_region(self, start: int, nbytes: int) -> None:
        if start + nbytes > self._arena.buffer.nbytes:
            raise FrameRejected("frames", f"region [{start}, {start + nbytes}) is outside the "
                                          f"{self._arena.buffer.nbytes}-byte arena")

    def _received(self, sender: str, h: MooncakeData, peer: str | None) -> Message:
        start, total = h.start, h.nbytes
        self._check_region(start, total)
        if not len(h.shapes) == len(h.dtypes) == len(h.offsets):
            raise FrameRejected("frames", "shapes, dtypes and offsets differ in length")
        arrays: list[np.ndarray] = []
        if total:
            region = (ctypes.c_uint8 * total).from_address(self._arena.address + start)
            region._arena = self._arena  # type: ignore[attr-defined]  # keep the memory alive
            weakref.finalize(region, self._arena.free_later, start, total)
            flat = np.frombuffer(cast(Any, region), dtype=np.uint8)
        for shape, dtype, offset in zip(h.shapes, h.dtypes, h.offsets, strict=True):
            dt = np.dtype(dtype)
            count = int(np.prod(shape)) if shape else 1
            if offset + count * dt.itemsize > total and count:
                raise FrameRejected("frames", "a payload array overruns its region")
            if total and count:
                arrays.append(flat[offset: offset + count * dt.itemsize].view(dt).reshape(shape))
            else:
                arrays.append(np.zeros(shape, dtype=dt))
        return Message(sender=sender, header=h.header, payload=arrays,
                       traffic_class=TrafficClass(h.traffic_class),
                       nbytes=sum(a.nbytes for a in arrays), peer=peer)
