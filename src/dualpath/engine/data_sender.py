"""`DataSender`: the background thread that streams an engine's data-plane messages
(`dualpath.wire.data`: HitReady, HitLayer, KvLayer, PrefillResult, PrefillFailed) to peers.

The sender thread keeps sends in order (one FIFO) and lets the model keep computing while
the CNIC paces the previous layer's bytes — this is the layerwise overlap. A failed send is
never swallowed: the rest of that request's messages are skipped and `on_failure` reports it
(the engine tells the scheduler, which re-runs or ends the request).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from dualpath.core.config import ClusterConfig
from dualpath.core.errors import TransferError
from dualpath.transfer.base import Transport
from dualpath.wire.data import KvHeader, kind_of
from dualpath.wire.types import AttemptId

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class _Outgoing:
    dest: str
    header: KvHeader
    payload: Sequence[np.ndarray]
    on_error: Callable[[TransferError], None] | None
    on_done: Callable[[], None] | None


class DataSender:
    """Sends data-plane messages from one background thread, in submission order."""

    def __init__(self, transport: Transport, remember: int = 4096,
                 on_failure: Callable[[AttemptId, str, TransferError], None] | None = None,
                 failed_for_s: float = ClusterConfig.peer_retry_after_s,
                 clock: Callable[[], float] = time.monotonic,
                 inject_failures: dict[str, int] | None = None) -> None:
        """`on_failure(attempt, dest, error)` runs (sender thread) once per attempt whose
        message could not be sent. `inject_failures` {kind: n} fails the first n sends of each
        kind (`wire.data.kind_of`, e.g. "kv_layer") as if the transport had (chaos drills)."""
        self._transport = transport
        self._queue: queue.Queue[_Outgoing | None] = queue.Queue()
        self._pending = 0
        self._idle = threading.Condition()
        self._on_failure = on_failure
        self._failed_for_s = failed_for_s
        self._clock = clock
        self._inject = dict(inject_failures or {})
        # dest -> (error, until when later sends to it fail at once)
        self._failed: dict[str, tuple[TransferError, float]] = {}
        self._dropped: dict[AttemptId, None] = {}  # bounded: the oldest ids are forgotten
        self._dropped_lock = threading.Lock()
        self._remember = remember
        self._thread = threading.Thread(target=self._loop, daemon=True, name="data-sender")
        self._thread.start()

    def submit(self, dest: str, header: KvHeader, payload: Sequence[np.ndarray] = (),
               on_error: Callable[[TransferError], None] | None = None,
               on_done: Callable[[], None] | None = None) -> None:
        """Queue one message. `on_done` runs after it was sent, failed or was dropped."""
        with self._idle:
            self._pending += 1
        self._queue.put(_Outgoing(dest, header, payload, on_error, on_done))

    def drop(self, attempt: AttemptId) -> None:
        """Skip every queued message of `attempt` (it was aborted)."""
        with self._dropped_lock:
            self._dropped[attempt] = None
            if len(self._dropped) > self._remember:
                self._dropped.pop(next(iter(self._dropped)), None)

    def _is_dropped(self, attempt: AttemptId | None) -> bool:
        with self._dropped_lock:
            return attempt in self._dropped

    def wait_idle(self, timeout_s: float | None = None) -> bool:
        """Block until everything submitted so far has been sent (or failed)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout_s)

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                if not self._is_dropped(getattr(item.header, "attempt", None)):
                    self._send(item)
            finally:
                if item.on_done is not None:
                    item.on_done()
                with self._idle:
                    self._pending -= 1
                    self._idle.notify_all()

    def _send(self, item: _Outgoing) -> None:
        kind = kind_of(item.header)
        try:
            failed = self._failed.get(item.dest)
            if failed is not None and self._clock() < failed[1]:
                raise failed[0]  # fast fail: the peer failed moments ago
            self._failed.pop(item.dest, None)
            try:
                if self._inject.get(kind, 0) > 0:
                    self._inject[kind] -= 1
                    raise TransferError(f"injected failure of a {kind} send to {item.dest}")
                self._transport.send(item.dest, item.header, item.payload)
            except TransferError as exc:
                self._failed[item.dest] = (exc, self._clock() + self._failed_for_s)
                raise
        except TransferError as exc:
            logger.warning("send %s to %s failed: %s", kind, item.dest, exc)
            if item.on_error is not None:
                item.on_error(exc)
            attempt = getattr(item.header, "attempt", None)
            if attempt is not None:
                # The attempt's stream is broken: skip the rest of it, report it once.
                self.drop(attempt)
                if self._on_failure is not None:
                    try:
                        self._on_failure(attempt, item.dest, exc)
                    except Exception:  # the sender thread must survive a failed report
                        logger.exception("reporting the failed send of %s failed", attempt)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5.0)
