"""Data-plane helpers of the engines: early-message parking and the ordered sender."""

from __future__ import annotations

import threading

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


def test_sender_reports_failures_and_fails_fast_afterwards() -> None:
    hub = LocalHub()
    a = LocalTransport(hub, "a")
    sender = DataSender(a)
    errors: list[TransferError] = []
    sender.submit("nowhere", {"rid": "x"}, on_error=errors.append)
    sender.submit("nowhere", {"rid": "x"}, on_error=errors.append)
    assert sender.wait_idle(5.0)
    assert len(errors) == 2
    sender.close()
