"""What both worker sides share: the paged caches, the relay, a sender thread, parked messages.

`WorkerCore` owns the I/O of one connector worker: the `RelayLink` and its receive thread
(messages are handed to the role's `on_message`; an exception there is logged and the
thread goes on), a sender thread with a bounded queue (so `save_kv_layer` never waits for
the network unless the queue is full: back-pressure), an I/O thread pool for store reads and
writes, the host buffers and the statistics file.

`Parking` holds messages that arrive before this instance knows their request (the router
sends to P and D at once, so either may be first): bounded in bytes and in age.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from dualpath.core.errors import DualPathError, TransferError
from dualpath.integrations.vllm.config import ConnectorConfig
from dualpath.integrations.vllm.host_buffer import HostBuffers
from dualpath.integrations.vllm.kv_layout import PagedLayout
from dualpath.integrations.vllm.relay_link import Received, RelayLink
from dualpath.integrations.vllm.resources import (
    InstanceStats,
    NodeFiles,
    open_cnic,
    open_snic,
    open_store,
)
from dualpath.kv.layout import BlockGeometry
from dualpath.kv.store import KVStore
from dualpath.wire.relay import RelayHeader

log = logging.getLogger(__name__)

_RECV_POLL_S = 0.2


class Parking:
    """Messages for requests not known yet, per key; bounded in bytes and age. Thread safe."""

    def __init__(self, capacity_bytes: int, ttl_s: float) -> None:
        self.capacity_bytes = capacity_bytes
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._items: dict[str, list[tuple[float, Received]]] = {}
        self._bytes = 0
        self.dropped = 0

    def park(self, received: Received) -> bool:
        nbytes = 0 if received.payload is None else received.payload.nbytes
        with self._lock:
            if self._bytes + nbytes > self.capacity_bytes:
                self.dropped += 1
                return False
            self._items.setdefault(received.message.key, []).append((time.monotonic(), received))
            self._bytes += nbytes
            return True

    def take(self, key: str) -> list[Received]:
        with self._lock:
            items = self._items.pop(key, [])
            self._bytes -= sum(_nbytes(r) for _, r in items)
            return [r for _, r in items]

    def expire(self) -> int:
        """Drop messages older than the TTL; returns how many."""
        cutoff = time.monotonic() - self.ttl_s
        dropped = 0
        with self._lock:
            for key in list(self._items):
                keep = [(t, r) for t, r in self._items[key] if t >= cutoff]
                gone = len(self._items[key]) - len(keep)
                if gone:
                    dropped += gone
                    self._bytes -= sum(_nbytes(r) for t, r in self._items[key] if t < cutoff)
                    if keep:
                        self._items[key] = keep
                    else:
                        del self._items[key]
            self.dropped += dropped
        return dropped

    @property
    def bytes(self) -> int:
        with self._lock:
            return self._bytes


def _nbytes(r: Received) -> int:
    return 0 if r.payload is None else r.payload.nbytes


@dataclass
class _Send:
    dest: str
    message: RelayHeader
    payload: np.ndarray | None
    on_error: Callable[[TransferError], None] | None


class WorkerCore:
    """Resources and threads of one connector worker (see the module docstring)."""

    def __init__(self, config: ConnectorConfig, geometry: BlockGeometry, *,
                 pinned: bool = False) -> None:
        self.config = config
        self.geometry = geometry
        files = NodeFiles(config.run_dir, config.node_id)
        self.snic = open_snic(files, config.snic_bytes_s)
        self.cnic = open_cnic(config.cnic_path(), f"cnic-{config.instance_name}",
                              config.cnic_bytes_s)
        self.store: KVStore = open_store(config.store_path, geometry, self.snic,
                                         io_threads=config.io_threads)
        self.stats = InstanceStats(config.stats_path())
        self.buffers = HostBuffers(config.buffer_bytes, pinned=pinned)
        self.parking = Parking(config.buffer_bytes, ttl_s=config.kv_wait_timeout_s)
        self.io = ThreadPoolExecutor(config.io_threads, thread_name_prefix="dualpath-io")
        # Streams to a peer whose forward is waiting for them never queue behind store I/O.
        self.streams = ThreadPoolExecutor(2, thread_name_prefix="dualpath-stream")
        self.link = RelayLink(config.relay_bind, bytes_per_token=geometry.bytes_per_token_per_layer,
                              cnic=self.cnic, send_timeout_s=config.send_timeout_s)
        self.layout: PagedLayout | None = None
        self.kv_caches: list[torch.Tensor] = []
        self._stop = threading.Event()
        self._handler: Callable[[Received], None] | None = None
        self._sendq: queue.Queue[_Send | None] = queue.Queue()
        self._send_cond = threading.Condition()
        self._queued_bytes = 0
        self._max_queued_bytes = max(config.buffer_bytes // 4, 1)
        self._threads = [
            threading.Thread(target=self._recv_loop, daemon=True, name="dualpath-relay-recv"),
            threading.Thread(target=self._send_loop, daemon=True, name="dualpath-relay-send"),
        ]

    def start(self, handler: Callable[[Received], None]) -> None:
        self._handler = handler
        for t in self._threads:
            t.start()

    def register(self, layout: PagedLayout, kv_caches: list[torch.Tensor]) -> None:
        """The paged KV cache of every attention layer, in layer order."""
        if len(kv_caches) != self.geometry.num_layers:
            raise TransferError(f"vLLM has {len(kv_caches)} attention layers, the store "
                                f"geometry {self.geometry.num_layers}")
        for kv in kv_caches:
            layout.check_layer(kv)
        self.layout = layout
        self.kv_caches = kv_caches

    @property
    def paged(self) -> PagedLayout:
        if self.layout is None:
            raise TransferError("the connector has no KV caches registered yet")
        return self.layout

    # -- sending ----------------------------------------------------------------------------

    def send_now(self, dest: str, message: RelayHeader, payload: np.ndarray | None = None) -> bool:
        """Send on the calling thread; False (logged) when the peer cannot be reached."""
        try:
            self.link.send(dest, message, payload)
            return True
        except TransferError as exc:
            log.warning("relay send of %s to %s failed: %s", type(message).__name__, dest, exc)
            return False

    def send_later(self, dest: str, message: RelayHeader, payload: np.ndarray | None = None,
                   on_error: Callable[[TransferError], None] | None = None) -> None:
        """Queue a send for the sender thread; blocks while the queue holds too many bytes."""
        nbytes = 0 if payload is None else payload.nbytes
        with self._send_cond:
            while self._queued_bytes > 0 and self._queued_bytes + nbytes > self._max_queued_bytes:
                self._send_cond.wait(1.0)
            self._queued_bytes += nbytes
        self._sendq.put(_Send(dest, message, payload, on_error))

    def _send_loop(self) -> None:
        while True:
            item = self._sendq.get()
            if item is None:
                return
            try:
                self.link.send(item.dest, item.message, item.payload)
            except TransferError as exc:
                log.warning("relay send to %s failed: %s", item.dest, exc)
                if item.on_error is not None:
                    _guarded(item.on_error, exc)
            finally:
                with self._send_cond:
                    self._queued_bytes -= 0 if item.payload is None else item.payload.nbytes
                    self._send_cond.notify_all()

    # -- receiving ----------------------------------------------------------------------------

    def _recv_loop(self) -> None:
        while not self._stop.is_set():
            try:
                received = self.link.recv(_RECV_POLL_S)
            except TransferError as exc:
                if self._stop.is_set():
                    return
                log.error("relay receive failed: %s", exc)
                continue
            if received is None or self._handler is None:
                continue
            _guarded(self._handler, received)

    def submit(self, fn: Callable[[], None]) -> Future[None]:
        """Run `fn` on the I/O pool; exceptions are logged there."""
        return self.io.submit(_guarded, fn)

    def submit_stream(self, fn: Callable[[], None]) -> Future[None]:
        """Run `fn` (a stream a peer's forward waits for) on the stream pool."""
        return self.streams.submit(_guarded, fn)

    def close(self) -> None:
        self._stop.set()
        self._sendq.put(None)
        for t in self._threads:
            if t.is_alive():
                t.join(timeout=5.0)
        self.io.shutdown(wait=False, cancel_futures=True)
        self.streams.shutdown(wait=False, cancel_futures=True)
        self.link.close()
        self.store.close()
        self.stats.close()


def _guarded(fn: Callable[..., None], *args: object) -> None:
    try:
        fn(*args)
    except DualPathError as exc:
        log.warning("dualpath connector: %s", exc)
    except Exception:  # a bug must not kill a relay or I/O thread
        log.exception("dualpath connector: unexpected error")
