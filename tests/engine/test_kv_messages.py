"""Data-plane helpers of the engines: early-message parking and the ordered sender."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from dualpath.core.errors import TransferError
from dualpath.engine.kv_messages import DataSender, EarlyMessages
from dualpath.transfer.local_transport import LocalHub, LocalTransport


def test_early_messages_replay_in_order_and_drop_after_forget() -> None:
    early = EarlyMessages(remember=2)
    early.keep("r1", "a")
    early.keep("r1", "b")
    assert early.take("r1") == ["a", "b"]
    assert early.take("r1") == []
    early.forget("r2")
    early.keep("r2", "late")  # a straggler of a finished request
    assert early.take("r2") == []
    early.forget("r3")
    early.forget("r4")  # evicts r2 from the bounded memory of finished ids
    early.keep("r2", "again")
    assert early.take("r2") == ["again"]


def test_sender_keeps_order_and_skips_dropped_requests() -> None:
    hub = LocalHub()
    a, b = LocalTransport(hub, "a"), LocalTransport(hub, "b")
    sender = DataSender(a)
    done = threading.Event()
    sender.submit(b.address, {"rid": "x", "i": 0}, [np.arange(4, dtype=np.uint8)])
    sender.drop("y")
    sender.submit(b.address, {"rid": "y", "i": 1}, on_done=done.set)
    sender.submit(b.address, {"rid": "x", "i": 2})
    assert sender.wait_idle(5.0)
    got = [b.recv(1.0), b.recv(1.0)]
    assert [m.header["i"] for m in got if m is not None] == [0, 2]
    assert got[0] is not None and got[0].payload[0].tolist() == [0, 1, 2, 3]
    assert done.is_set()  # on_done runs for dropped messages too (buffers are released)
    sender.close()


class _FlakyTransport:
    """Sends fail while `down`; counts the sends that reached it."""

    def __init__(self) -> None:
        self.down = True
        self.tried: list[dict[str, object]] = []

    def send(self, dest: str, header: dict[str, object], payload: object) -> None:
        self.tried.append(header)
        if self.down:
            raise TransferError(f"send to {dest} did not complete")


def test_sender_reports_a_failed_request_once_and_skips_the_rest_of_it() -> None:
    transport: Any = _FlakyTransport()
    failures: list[tuple[str, str]] = []
    errors: list[TransferError] = []
    sender = DataSender(transport, on_failure=lambda rid, dest, exc: failures.append((rid, dest)))
    sender.submit("pe", {"rid": "x", "i": 0}, on_error=errors.append)
    sender.submit("pe", {"rid": "x", "i": 1}, on_error=errors.append)
    assert sender.wait_idle(5.0)
    assert failures == [("x", "pe")]  # reported, not swallowed; once per request
    assert len(errors) == 1  # the rest of x's stream is skipped, not sent
    sender.close()


def test_failed_peer_fails_fast_then_is_retried_after_the_window() -> None:
    now = [100.0]
    transport: Any = _FlakyTransport()
    failures: list[str] = []
    sender = DataSender(transport, on_failure=lambda rid, dest, exc: failures.append(rid),
                        failed_for_s=5.0, clock=lambda: now[0])
    sender.submit("pe", {"rid": "a"})
    assert sender.wait_idle(5.0) and len(transport.tried) == 1
    transport.down = False  # the peer is fine again, but within the window ...
    now[0] += 4.0
    sender.submit("pe", {"rid": "b"})
    sender.submit("de", {"rid": "c"})  # other peers are not affected
    assert sender.wait_idle(5.0)
    assert failures == ["a", "b"]  # ... b failed fast, without a send
    assert [h["rid"] for h in transport.tried] == ["a", "c"]
    now[0] += 1.5  # past the window: the peer is tried again
    sender.submit("pe", {"rid": "d"})
    assert sender.wait_idle(5.0)
    assert failures == ["a", "b"] and [h["rid"] for h in transport.tried] == ["a", "c", "d"]
    sender.close()


def test_injected_failures_fail_the_first_sends_of_a_kind() -> None:
    hub = LocalHub()
    a, b = LocalTransport(hub, "a"), LocalTransport(hub, "b")
    failures: list[str] = []
    sender = DataSender(a, on_failure=lambda rid, dest, exc: failures.append(rid),
                        failed_for_s=0.0, inject_failures={"kv_layer": 1})
    sender.submit(b.address, {"kind": "kv_layer", "rid": "x"})
    sender.submit(b.address, {"kind": "kv_layer", "rid": "y"})
    assert sender.wait_idle(5.0)
    assert failures == ["x"]
    got = b.recv(1.0)
    assert got is not None and got.header["rid"] == "y"
    sender.close()
