"""Data-plane helpers of the engines: early-message parking and the ordered sender."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
from local_transport import LocalHub, LocalTransport

from dualpath.core.errors import TransferError
from dualpath.engine.data_sender import DataSender
from dualpath.engine.early_messages import EarlyMessages
from dualpath.wire.data import HitReady, KvLayer
from dualpath.wire.types import AttemptId


def A(rid: str) -> AttemptId:
    return AttemptId(rid, 1)


def test_early_messages_replay_in_order_and_drop_after_forget() -> None:
    r1, r2, r3, r4 = (A(f"r{i}") for i in range(1, 5))
    early = EarlyMessages(remember=2)
    early.keep(r1, "a")
    early.keep(r1, "b")
    assert early.take(r1) == ["a", "b"]
    assert early.take(r1) == []
    early.forget(r2)
    early.keep(r2, "late")  # a straggler of a finished request
    assert early.take(r2) == []
    early.forget(r3)
    early.forget(r4)  # evicts r2 from the bounded memory of finished ids
    early.keep(r2, "again")
    assert early.take(r2) == ["again"]


def test_early_messages_park_a_bounded_number_of_attempts() -> None:
    early = EarlyMessages(remember=3)
    for i in range(10):  # data for attempts that never get assigned
        early.keep(A(f"x{i}"), i)
    assert early.parked == 3 and early.take(A("x9")) == [9] and early.take(A("x0")) == []


def test_sender_keeps_order_and_skips_dropped_requests() -> None:
    hub = LocalHub()
    a, b = LocalTransport(hub, "a"), LocalTransport(hub, "b")
    sender = DataSender(a)
    done = threading.Event()
    sender.submit(b.address, HitReady(A("x"), 0), [np.arange(4, dtype=np.uint8)])
    sender.drop(A("y"))
    sender.submit(b.address, HitReady(A("y"), 1), on_done=done.set)
    sender.submit(b.address, HitReady(A("x"), 2))
    assert sender.wait_idle(5.0)
    got = [b.recv(1.0), b.recv(1.0)]
    assert [m.header for m in got if m is not None] == [HitReady(A("x"), 0), HitReady(A("x"), 2)]
    assert got[0] is not None and got[0].payload[0].tolist() == [0, 1, 2, 3]
    assert done.is_set()  # on_done runs for dropped messages too (buffers are released)
    sender.close()


class _FlakyTransport:
    """Sends fail while `down`; counts the sends that reached it."""

    def __init__(self) -> None:
        self.down = True
        self.tried: list[HitReady] = []

    def send(self, dest: str, header: HitReady, payload: object) -> None:
        self.tried.append(header)
        if self.down:
            raise TransferError(f"send to {dest} did not complete")


def test_sender_reports_a_failed_request_once_and_skips_the_rest_of_it() -> None:
    transport: Any = _FlakyTransport()
    failures: list[tuple[AttemptId, str]] = []
    errors: list[TransferError] = []
    sender = DataSender(transport, on_failure=lambda rid, dest, exc: failures.append((rid, dest)))
    sender.submit("pe", HitReady(A("x"), 0), on_error=errors.append)
    sender.submit("pe", HitReady(A("x"), 1), on_error=errors.append)
    assert sender.wait_idle(5.0)
    assert failures == [(A("x"), "pe")]  # reported, not swallowed; once per request
    assert len(errors) == 1  # the rest of x's stream is skipped, not sent
    sender.close()


def test_failed_peer_fails_fast_then_is_retried_after_the_window() -> None:
    now = [100.0]
    transport: Any = _FlakyTransport()
    failures: list[str] = []
    sender = DataSender(transport, on_failure=lambda a, dest, exc: failures.append(a.request_id),
                        failed_for_s=5.0, clock=lambda: now[0])
    sender.submit("pe", HitReady(A("a"), 0))
    assert sender.wait_idle(5.0) and len(transport.tried) == 1
    transport.down = False  # the peer is fine again, but within the window ...
    now[0] += 4.0
    sender.submit("pe", HitReady(A("b"), 0))
    sender.submit("de", HitReady(A("c"), 0))  # other peers are not affected
    assert sender.wait_idle(5.0)
    assert failures == ["a", "b"]  # ... b failed fast, without a send
    assert [h.attempt.request_id for h in transport.tried] == ["a", "c"]
    now[0] += 1.5  # past the window: the peer is tried again
    sender.submit("pe", HitReady(A("d"), 0))
    assert sender.wait_idle(5.0)
    assert failures == ["a", "b"]
    assert [h.attempt.request_id for h in transport.tried] == ["a", "c", "d"]
    sender.close()


def test_injected_failures_fail_the_first_sends_of_a_kind() -> None:
    hub = LocalHub()
    a, b = LocalTransport(hub, "a"), LocalTransport(hub, "b")
    failures: list[AttemptId] = []
    sender = DataSender(a, on_failure=lambda attempt, dest, exc: failures.append(attempt),
                        failed_for_s=0.0, inject_failures={"kv_layer": 1})
    sender.submit(b.address, KvLayer(A("x"), 0, 0, 1))
    sender.submit(b.address, HitReady(A("w"), 0))  # another kind: not injected
    sender.submit(b.address, KvLayer(A("y"), 0, 0, 1))
    assert sender.wait_idle(5.0)
    assert failures == [A("x")]
    got = [b.recv(1.0), b.recv(1.0)]
    assert [m.header.attempt for m in got if m is not None] == [A("w"), A("y")]
    sender.close()
