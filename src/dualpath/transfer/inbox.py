"""The receive side shared by all transports: RX pacing on the receiver's CNIC, then a queue.

Arrived messages are paced on the CNIC RX lane by one worker thread per traffic class, so a
large KV message being paced never holds back a model-execution message behind it (the
lane's own arbitration decides who goes first). Order is kept within a class, not across.
"""

from __future__ import annotations

import queue
import threading
import time

from dualpath.transfer.base import Message
from dualpath.transfer.nic import Direction, EmulatedNic, TrafficClass


class Inbox:
    """Where a transport's receive thread drops messages; `get` hands them to the engine."""

    def __init__(self, cnic: EmulatedNic | None) -> None:
        self._cnic = cnic
        self._ready: queue.Queue[Message] = queue.Queue()
        self._arrived: dict[TrafficClass, queue.Queue[tuple[Message, float] | None]] = {}
        self._workers: list[threading.Thread] = []
        if cnic is not None and not cnic.spec.unlimited:
            for klass in TrafficClass:
                q: queue.Queue[tuple[Message, float] | None] = queue.Queue()
                self._arrived[klass] = q
                t = threading.Thread(target=self._pace, args=(q,), daemon=True,
                                     name=f"rx-{klass.name.lower()}")
                t.start()
                self._workers.append(t)

    def deliver(self, message: Message) -> None:
        """Called by the receive thread when `message` has fully arrived."""
        if self._workers:
            self._arrived[message.traffic_class].put((message, time.monotonic()))
            return
        if self._cnic is not None:  # unlimited: count the bytes only
            self._cnic.transmit(message.nbytes, message.traffic_class, Direction.RX)
        self._ready.put(message)

    def get(self, timeout_s: float | None) -> Message | None:
        try:
            return self._ready.get(timeout=timeout_s)
        except queue.Empty:
            return None

    def close(self) -> None:
        for q in self._arrived.values():
            q.put(None)
        for t in self._workers:
            t.join()
        self._workers.clear()

    def _pace(self, arrived: queue.Queue[tuple[Message, float] | None]) -> None:
        assert self._cnic is not None and self._cnic.spec.bandwidth_bytes_s is not None
        rate = self._cnic.spec.bandwidth_bytes_s
        while True:
            item = arrived.get()
            if item is None:
                return
            message, arrival_s = item
            # Cut-through: at the RX rate the message could have been streaming in since
            # arrival - nbytes/rate; if the lane was free then, it costs no extra delay.
            self._cnic.transmit(message.nbytes, message.traffic_class, Direction.RX,
                                earliest_start_s=arrival_s - message.nbytes / rate)
            self._ready.put(message)
