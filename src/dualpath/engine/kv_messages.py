"""Data-plane messages between engines, and the background sender that streams them.

Headers are small dicts (the transfer layer msgpacks them); payloads are uint8 arrays in
the Full/Layer Block byte layout (`[tokens, kv_bytes_per_token_per_layer]` per layer).

    kind="hit_ready"      DE -> PE   {rid, hit_tokens}            DE path: reads are done
    kind="hit_layer"      DE -> PE   {rid, layer}  + blocks' layer i (one array per block)
    kind="kv_layer"       PE -> DE   {rid, layer, start, n}  + [n, B] of layer i
    kind="prefill_result" PE -> DE   {rid, first_token, prompt_tokens, cached_tokens}
    kind="prefill_failed" PE -> DE   {rid, error}

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
from typing import Any

import numpy as np

from dualpath.core.errors import TransferError
from dualpath.transfer.base import Transport

logger = logging.getLogger(__name__)

# After a failed send, later sends to that peer fail at once for this long instead of each
# waiting out the transport's send timeout (a dead peer is marked dead by the scheduler within
# a fraction of a second, and then gets no new work); afterwards the peer is tried again, so
# one timeout of a live peer does not cut the pair off for good.
PEER_FAILED_FOR_S = 2.0


@dataclass(frozen=True)
class _Outgoing:
    dest: str
    header: dict[str, Any]
    payload: Sequence[np.ndarray]
    on_error: Callable[[TransferError], None] | None
    on_done: Callable[[], None] | None


class DataSender:
    """Sends data-plane messages from one background thread, in submission order."""

    def __init__(self, transport: Transport, remember: int = 4096,
                 on_failure: Callable[[str, str, TransferError], None] | None = None,
                 failed_for_s: float = PEER_FAILED_FOR_S,
                 clock: Callable[[], float] = time.monotonic,
                 inject_failures: dict[str, int] | None = None) -> None:
        """`on_failure(rid, dest, error)` runs (sender thread) once per request whose message
        could not be sent. `inject_failures` {kind: n} fails the first n sends of each kind
        as if the transport had (chaos drills, tests)."""
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
        self._dropped: dict[str, None] = {}  # bounded: the oldest ids are forgotten
        self._dropped_lock = threading.Lock()
        self._remember = remember
        self._thread = threading.Thread(target=self._loop, daemon=True, name="data-sender")
        self._thread.start()

    def submit(self, dest: str, header: dict[str, Any], payload: Sequence[np.ndarray] = (),
               on_error: Callable[[TransferError], None] | None = None,
               on_done: Callable[[], None] | None = None) -> None:
        """Queue one message. `on_done` runs after it was sent, failed or was dropped."""
        with self._idle:
            self._pending += 1
        self._queue.put(_Outgoing(dest, header, payload, on_error, on_done))

    def drop(self, rid: str) -> None:
        """Skip every queued message of request `rid` (it was aborted)."""
        with self._dropped_lock:
            self._dropped[rid] = None
            if len(self._dropped) > self._remember:
                self._dropped.pop(next(iter(self._dropped)), None)

    def _is_dropped(self, rid: object) -> bool:
        with self._dropped_lock:
            return rid in self._dropped

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
                if not self._is_dropped(item.header.get("rid")):
                    self._send(item)
            finally:
                if item.on_done is not None:
                    item.on_done()
                with self._idle:
                    self._pending -= 1
                    self._idle.notify_all()

    def _send(self, item: _Outgoing) -> None:
        kind = str(item.header.get("kind"))
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
            rid = item.header.get("rid")
            if rid is not None:
                # The request's stream is broken: skip the rest of it, report it once.
                self.drop(str(rid))
                if self._on_failure is not None:
                    try:
                        self._on_failure(str(rid), item.dest, exc)
                    except Exception:  # the sender thread must survive a failed report
                        logger.exception("reporting the failed send of %s failed", rid)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5.0)


class EarlyMessages:
    """Data messages that arrived before the control message creating their request.

    Engines' control and data planes are separate sockets, so a peer's data can overtake the
    scheduler's assignment. Messages are parked by request id and replayed on assignment;
    ids that finished or were aborted are remembered (bounded) so their stragglers are dropped.
    """

    def __init__(self, remember: int = 4096) -> None:
        self._parked: dict[str, list[Any]] = {}
        self._gone: dict[str, None] = {}
        self._remember = remember

    def keep(self, rid: str, msg: Any) -> None:
        if rid not in self._gone:
            self._parked.setdefault(rid, []).append(msg)

    @property
    def parked(self) -> int:
        """Messages waiting for their request's assignment."""
        return sum(len(v) for v in self._parked.values())

    def take(self, rid: str) -> list[Any]:
        return self._parked.pop(rid, [])

    def forget(self, rid: str) -> None:
        """`rid` is over: drop what is parked and ignore what still comes."""
        self._parked.pop(rid, None)
        self._gone[rid] = None
        if len(self._gone) > self._remember:
            del self._gone[next(iter(self._gone))]
