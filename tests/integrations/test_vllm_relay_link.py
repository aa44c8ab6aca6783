"""Router params, relay messages and the RelayLink: nothing received is trusted."""

from __future__ import annotations

import numpy as np
import pytest

from dualpath.core.errors import TransferError
from dualpath.integrations.vllm.params import DualPathParams, ParamsError, prompt_digest
from dualpath.integrations.vllm.relay_link import RelayLink
from dualpath.transfer.zmq_transport import ZmqTransport
from dualpath.wire.data import Probe
from dualpath.wire.relay import RelayAbort, RelayHitLayer, RelayKvLayer, RelayReady

BPT = 48
KEY = "0123456789abcdef"


def _params(**kw: object) -> dict[str, object]:
    base: dict[str, object] = {"key": KEY, "role": "prefill", "read_side": "de",
                               "hit_tokens": 64, "prompt_tokens": 100,
                               "digest": prompt_digest(list(range(100))),
                               "peer": "tcp://127.0.0.1:5555"}
    base.update(kw)
    return {"dualpath": base}


def test_params_round_trip_and_prompt_check() -> None:
    p = DualPathParams.from_request_params(_params())
    assert p is not None and p.hit_blocks(64) == 1
    assert DualPathParams.from_request_params(p.request_params()) == p
    p.check_prompt(list(range(100)))
    with pytest.raises(ParamsError, match="differ"):
        p.check_prompt([*range(99), 7])
    with pytest.raises(ParamsError, match="tokens here"):
        p.check_prompt(list(range(99)))
    assert DualPathParams.from_request_params(None) is None
    assert DualPathParams.from_request_params({"other": 1}) is None


@pytest.mark.parametrize("bad", [
    {"key": "XYZ"}, {"role": "both"}, {"read_side": "split"}, {"hit_tokens": -1},
    {"hit_tokens": 100}, {"hit_tokens": True}, {"prompt_tokens": "100"},
    {"digest": "00"}, {"peer": "http://x:1"}, {"peer": "tcp://host:1; rm -rf /"},
])
def test_params_refuse_bad_fields(bad: dict[str, object]) -> None:
    with pytest.raises(ParamsError):
        DualPathParams.from_request_params(_params(**bad))


def test_params_refuse_missing_fields_and_unaligned_hits() -> None:
    raw = _params()
    del raw["dualpath"]["peer"]  # type: ignore[attr-defined]
    with pytest.raises(ParamsError, match="lacks peer"):
        DualPathParams.from_request_params(raw)
    p = DualPathParams.from_request_params(_params(hit_tokens=65))
    assert p is not None
    with pytest.raises(ParamsError, match="multiple"):
        p.check_blocks(64)


def _recv(link: RelayLink, timeout_s: float = 5.0):
    got = link.recv(timeout_s)
    assert got is not None
    return got


def test_link_delivers_valid_messages_with_payload() -> None:
    a = RelayLink("tcp://127.0.0.1:0", bytes_per_token=BPT)
    b = RelayLink("tcp://127.0.0.1:0", bytes_per_token=BPT)
    try:
        payload = np.arange(3 * BPT, dtype=np.uint8).reshape(3, BPT)
        a.send(b.address, RelayKvLayer(key=KEY, layer=2, start_token=64, num_tokens=3), payload)
        a.send(b.address, RelayReady(key=KEY))
        first, second = _recv(b), _recv(b)
        assert first.sender == a.address
        assert first.message == RelayKvLayer(key=KEY, layer=2, start_token=64, num_tokens=3)
        np.testing.assert_array_equal(first.payload, payload)
        assert second.message == RelayReady(key=KEY) and second.payload is None
    finally:
        a.close()
        b.close()


def test_link_refuses_to_send_a_mismatched_payload() -> None:
    a = RelayLink("tcp://127.0.0.1:0", bytes_per_token=BPT)
    try:
        with pytest.raises(TransferError):
            a.send(a.address, RelayHitLayer(key=KEY, layer=0, num_tokens=4),
                   np.zeros((3, BPT), np.uint8))
        with pytest.raises(TransferError):
            a.send(a.address, RelayReady(key=KEY), np.zeros((1, BPT), np.uint8))
    finally:
        a.close()


@pytest.mark.parametrize("header, payload", [
    (Probe(seq=1), []),  # a valid wire header, but not the relay's
    (RelayReady(key="not-hex!"), []),  # refused by the wire decoder
    (RelayKvLayer(key=KEY, layer=-1, start_token=0, num_tokens=1), [np.zeros((1, BPT), np.uint8)]),
    (RelayKvLayer(key=KEY, layer=0, start_token=0, num_tokens=2), [np.zeros((1, BPT), np.uint8)]),
    (RelayKvLayer(key=KEY, layer=0, start_token=0, num_tokens=1), []),
    (RelayHitLayer(key=KEY, layer=0, num_tokens=1), [np.zeros((1, BPT), np.float32)]),
    (RelayAbort(key=KEY, reason="x"), [np.zeros((1, BPT), np.uint8)]),
])
def test_link_drops_invalid_frames_and_keeps_going(header, payload) -> None:
    link = RelayLink("tcp://127.0.0.1:0", bytes_per_token=BPT)
    raw = ZmqTransport("tcp://127.0.0.1:0")
    try:
        raw.send(link.address, header, payload)
        raw.send(link.address, RelayAbort(key=KEY, reason="ok"))
        got = _recv(link)
        assert got.message == RelayAbort(key=KEY, reason="ok")
        assert link.rejected == 1
    finally:
        raw.close()
        link.close()


def test_recv_times_out_with_none() -> None:
    link = RelayLink("tcp://127.0.0.1:0", bytes_per_token=BPT)
    try:
        assert link.recv(0.05) is None
    finally:
        link.close()
