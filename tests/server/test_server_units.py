"""Unit tests of the pieces under the HTTP layer: detokenizer, stop strings, admission, echo."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dualpath.core.requests import FinishEvent, GenerateRequest, SamplingParams, TokenEvent
from dualpath.server.admission import Admission, Draining, QueueFull
from dualpath.server.detokenizer import IncrementalDetokenizer, StopStringMatcher
from dualpath.server.echo_backend import EchoBackend
from dualpath.server.tokenizer import ByteTokenizer


@given(st.text(max_size=40), st.lists(st.integers(1, 4), min_size=1, max_size=40))
def test_incremental_detokenizer_reassembles_any_utf8(text: str, sizes: list[int]) -> None:
    tok = ByteTokenizer()
    ids = tok.encode(text)  # byte ids: multi-byte characters get split freely
    detok = IncrementalDetokenizer(tok, tok.encode("prompt "))
    out, pos, i = [], 0, 0
    while pos < len(ids):
        step = sizes[i % len(sizes)]
        piece = detok.push(ids[pos : pos + step])
        assert "\ufffd" not in piece or "\ufffd" in text
        out.append(piece)
        pos, i = pos + step, i + 1
    out.append(detok.flush())
    assert "".join(out) == tok.decode(ids)


def test_stop_string_spanning_deltas_is_cut_and_never_emitted() -> None:
    m = StopStringMatcher(["STOP"])
    emitted = [m.push("abc S"), m.push("T"), m.push("OP and more")]
    assert m.stopped
    assert "".join(emitted) == "abc "
    assert m.text == "abc "
    assert m.push("later") == ""


def test_stop_string_holdback_released_when_not_matching() -> None:
    m = StopStringMatcher(["xyz"])
    assert m.push("abx") == "a"  # "bx" could start "xyz"
    assert m.push("y!") == "bx"
    assert m.push("", final=True) == "y!"
    assert not m.stopped


@given(st.text(alphabet="ab", max_size=30), st.sampled_from(["ab", "ba", "aab", "b"]),
       st.integers(1, 5))
def test_stop_matcher_equals_str_find(text: str, stop: str, chunk: int) -> None:
    m = StopStringMatcher([stop])
    out = [m.push(text[i : i + chunk]) for i in range(0, len(text), chunk)]
    out.append(m.push("", final=True))
    cut = text.find(stop)
    assert "".join(out) == (text if cut == -1 else text[:cut])
    assert m.stopped == (cut != -1)


async def test_admission_fifo_queue_full_and_cancel() -> None:
    adm = Admission(max_running=1, max_waiting=2)
    await adm.acquire()
    order: list[str] = []

    async def waiter(name: str) -> None:
        await adm.acquire()
        order.append(name)

    a = asyncio.create_task(waiter("a"))
    b = asyncio.create_task(waiter("b"))
    await asyncio.sleep(0)
    assert adm.waiting == 2
    with pytest.raises(QueueFull):
        await adm.acquire()
    a.cancel()
    await asyncio.sleep(0)
    assert adm.waiting == 1
    adm.release()
    await b
    assert order == ["b"] and adm.running == 1
    adm.release()
    assert adm.running == 0
    adm.draining = True
    with pytest.raises(Draining):
        await adm.acquire()


async def collect(backend: EchoBackend, prompt: tuple[int, ...], **sp: object) -> list[object]:
    req = GenerateRequest("r", prompt, SamplingParams(**sp))  # type: ignore[arg-type]
    return [ev async for ev in backend.generate(req)]


async def test_echo_backend_prefix_map_counts_whole_blocks() -> None:
    backend = EchoBackend(block_tokens=4)
    p1 = tuple(range(10))
    evs = await collect(backend, p1, max_tokens=3, temperature=0.0)
    fin = evs[-1]
    assert isinstance(fin, FinishEvent) and fin.cached_tokens == 0
    gen = tuple(t for ev in evs if isinstance(ev, TokenEvent) for t in ev.token_ids)
    # prompt + generated = 13 tokens -> 3 whole blocks stored; the next turn extends them.
    evs2 = await collect(backend, p1 + gen + (1, 2, 3), max_tokens=1, temperature=0.0)
    fin2 = evs2[-1]
    assert isinstance(fin2, FinishEvent) and fin2.cached_tokens == 12
    other = await collect(backend, (9, *p1), max_tokens=1, temperature=0.0)
    assert isinstance(other[-1], FinishEvent) and other[-1].cached_tokens == 0
    assert backend.metrics_snapshot().buffer_bytes_in_use == {"echo": 0}


class _RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str) -> str:
        return f"info:{name}"


async def test_coalescing_transport_joins_writes_of_one_turn() -> None:
    from dualpath.server.http_protocol import CoalescingTransport

    raw = _RecordingTransport()
    t = CoalescingTransport(raw, asyncio.get_running_loop())  # type: ignore[arg-type]
    t.write(b"HTTP/1.1 200 OK\r\n\r\n")
    t.write(b"body")
    assert raw.writes == [] and t.get_write_buffer_size() == 23
    await asyncio.sleep(0)
    assert raw.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody"]
    t.write(b"last")
    t.close()  # flushes before closing
    assert raw.writes[-1] == b"last" and raw.closed
    assert t.get_extra_info("peername") == "info:peername"
