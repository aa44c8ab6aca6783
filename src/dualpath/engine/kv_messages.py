"""Data-plane messages between engines, and the background sender that streams them.

Headers are small dicts (the transfer layer msgpacks them); payloads are uint8 arrays in
the Full/Layer Block byte layout (`[tokens, kv_bytes_per_token_per_layer]` per layer).

    kind="hit_ready"      DE -> PE   {rid, hit_tokens}            DE path: reads are done
    kind="hit_layer"      DE -> PE   {rid, layer}  + blocks' layer i (one array per block)
    kind="kv_layer"       PE -> DE   {rid, layer, start, n}  + [n, B] of layer i
    kind="prefill_result" PE -> DE   {rid, first_token, prompt_tokens, cached_tokens}
    kind="prefill_failed" PE -> DE   {rid, error}

The sender thread keeps sends in order (one FIFO) and lets the model keep computing while
the CNIC paces the previous layer's bytes — this is the layerwise overlap.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dualpath.core.errors import TransferError
from dualpath.transfer.base import Transport

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Outgoing:
    dest: str
    header: dict[str, Any]
    payload: Sequence[np.ndarray]
    on_error: Callable[[TransferError], None] | None
    on_done: Callable[[], None] | None


class DataSender:
    """Sends data-plane messages from one background thread, in submission order."""

    def __init__(self, transport: Transport, remember: int = 4096) -> None:
        self._transport = transport
        self._queue: queue.Queue[_Outgoing | None] = queue.Queue()
        self._pending = 0
        self._idle = threading.Condition()
        # A peer that failed once is presumed dead (engines never reuse an address): later
        # sends to it fail at once instead of each waiting out the send timeout.
        self._dead: dict[str, TransferError] = {}
        self._dropped: dict[str, None] = {}  # bounded: the oldest ids are forgotten
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
        self._dropped[rid] = None
        if len(self._dropped) > self._remember:
            self._dropped.pop(next(iter(self._dropped)), None)

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
                if item.header.get("rid") in self._dropped:
                    continue
                if item.dest in self._dead:
                    raise self._dead[item.dest]
                self._transport.send(item.dest, item.header, item.payload)
            except TransferError as exc:
                self._dead[item.dest] = exc
                logger.warning("send %s to %s failed: %s", item.header.get("kind"), item.dest, exc)
                if item.on_error is not None:
                    item.on_error(exc)
            finally:
                if item.on_done is not None:
                    item.on_done()
                with self._idle:
                    self._pending -= 1
                    self._idle.notify_all()

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
