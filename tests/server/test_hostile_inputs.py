"""A hostile client against a real server process: every bad input gets its exact status (and,
for a bad field, an OpenAI error naming it), and a normal request succeeds right after.

One echo server process (context 512 tokens, 1 MiB bodies, 16 KiB heads, 1 s header / body /
keep-alive timeouts) serves every case of the module. Cases on the options another issue will
implement (tools, logprobs, n > 1, penalties...) are marked `# not yet supported`: when a
feature lands, change that row's expected status.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from process_harness import ServerProcess, read_until_closed, status_of

C, CHAT = "/v1/completions", "/v1/chat/completions"
MSG = [{"role": "user", "content": "hi"}]
CTX = 512


def comp(**fields: Any) -> dict[str, Any]:
    return {"prompt": "hello", "max_tokens": 4, **fields}


def chat(**fields: Any) -> dict[str, Any]:
    return {"messages": MSG, "max_tokens": 4, **fields}


def raw(text: str) -> bytes:
    return text.encode()


NESTED = b'{"prompt": "x", "junk": ' + b"[" * 10000 + b"]" * 10000 + b"}"
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}

# (id, path, body: dict -> JSON / bytes -> sent as is, status, param the error must name)
CASES: list[tuple[str, str, Any, int, str | None]] = [
    # -- wrong types -----------------------------------------------------------------------
    ("max_tokens-string", C, comp(max_tokens="many"), 400, "max_tokens"),
    ("max_tokens-bool", C, comp(max_tokens=True), 400, "max_tokens"),
    ("max_tokens-float", C, comp(max_tokens=16.5), 400, "max_tokens"),
    ("temperature-string", C, comp(temperature="hot"), 400, "temperature"),
    ("stream-string", C, comp(stream="yes"), 400, "stream"),
    ("prompt-number", C, {"prompt": 42}, 400, "prompt"),
    ("prompt-object", C, {"prompt": {"a": 1}}, 400, "prompt"),
    ("prompt-mixed-list", C, {"prompt": [1, "a"]}, 400, "prompt"),
    ("prompt-missing", C, {"max_tokens": 3}, 400, "prompt"),
    ("stop-number", C, comp(stop=5), 400, "stop"),
    ("stop-list-of-numbers", C, comp(stop=[1, 2]), 400, "stop"),
    ("seed-string", C, comp(seed="7"), 400, "seed"),
    ("stop_token_ids-string", C, comp(stop_token_ids="1"), 400, "stop_token_ids"),
    ("stream_options-string", C, comp(stream_options="x"), 400, "stream_options"),
    ("messages-string", CHAT, {"messages": "hi"}, 400, "messages"),
    ("content-number", CHAT, {"messages": [{"role": "user", "content": 5}]}, 400,
     "messages.0.content"),
    ("body-array", C, b"[]", 400, None),
    ("body-null", C, b"null", 400, None),
    ("body-string", C, b'"hello"', 400, None),
    # -- out of range and huge numbers -----------------------------------------------------
    ("seed-2**70", C, comp(seed=2**70), 400, "seed"),
    ("seed-below-int64", C, comp(seed=-(2**63) - 1), 400, "seed"),
    ("seed-uint64-max", C, comp(seed=2**64 - 1), 200, None),
    ("seed-negative", C, comp(seed=-1), 200, None),
    ("max_tokens-2**70", C, comp(max_tokens=2**70), 400, "max_tokens"),
    ("max_tokens-zero", C, comp(max_tokens=0), 400, "max_tokens"),
    ("max_tokens-negative", C, comp(max_tokens=-1), 400, "max_tokens"),
    ("max_tokens-over-context", C, comp(max_tokens=100_000), 400, "prompt"),
    ("max_completion_tokens-zero", CHAT, chat(max_completion_tokens=0), 400,
     "max_completion_tokens"),
    ("temperature-negative", C, comp(temperature=-0.1), 400, "temperature"),
    ("temperature-over-2", C, comp(temperature=2.0001), 400, "temperature"),
    ("temperature-1e308", C, comp(temperature=1e308), 400, "temperature"),
    ("temperature-1e-300", C, comp(temperature=1e-300), 200, None),
    ("top_p-zero", C, comp(top_p=0), 400, "top_p"),
    ("top_p-over-1", C, comp(top_p=1.5), 400, "top_p"),
    ("top_p-1e-300", C, comp(top_p=1e-300), 200, None),
    ("n-2", C, comp(n=2), 400, "n"),  # not yet supported
    ("n-huge", C, comp(n=10**30), 400, "n"),
    ("min_tokens-huge", C, comp(min_tokens=10**12), 400, "min_tokens"),
    ("min_tokens-over-max", C, comp(max_tokens=4, min_tokens=5), 400, "min_tokens"),
    ("stop_token_ids-negative", C, comp(stop_token_ids=[-1]), 400, "stop_token_ids.0"),
    ("stop_token_ids-2**40", C, comp(stop_token_ids=[2**40]), 400, "stop_token_ids.0"),
    ("stop_token_ids-outside-vocab", C, comp(stop_token_ids=[100_000]), 400, "stop_token_ids"),
    ("stop_token_ids-too-many", C, comp(stop_token_ids=[1] * 257), 400, "stop_token_ids"),
    ("prompt-id-2**70", C, {"prompt": [2**70]}, 400, "prompt"),
    ("prompt-id-negative", C, {"prompt": [-5]}, 400, "prompt"),
    ("prompt-ids-empty", C, {"prompt": []}, 400, "prompt"),
    ("presence_penalty-3", C, comp(presence_penalty=3), 400, "presence_penalty"),
    ("temperature-1e400", C, raw('{"prompt": "x", "temperature": 1e400}'), 400, "temperature"),
    # -- NaN / Infinity --------------------------------------------------------------------
    ("temperature-NaN", C, raw('{"prompt": "x", "temperature": NaN}'), 400, "temperature"),
    ("top_p-Infinity", C, raw('{"prompt": "x", "top_p": Infinity}'), 400, "top_p"),
    ("penalty--Infinity", C, raw('{"prompt": "x", "frequency_penalty": -Infinity}'), 400,
     "frequency_penalty"),
    ("seed-NaN", C, raw('{"prompt": "x", "seed": NaN}'), 400, "seed"),
    # -- stop strings: the total is bounded, one long string is fine -------------------------
    ("stop-one-long", C, comp(stop="z" * 10_000), 200, None),
    ("stop-64-filling-the-total", C, comp(stop=["q" * 256] * 64), 200, None),
    ("stop-65-strings", C, comp(stop=["a"] * 65), 400, "stop"),
    ("stop-total-too-large", C, comp(stop=["b" * 2000] * 16), 400, "stop"),
    # -- malformed bodies ------------------------------------------------------------------
    ("nested-json-unknown-field", C, NESTED, 400, None),
    ("nested-json-prompt", C, b'{"prompt": ' + b"[" * 5000 + b"]" * 5000 + b"}", 400, None),
    ("invalid-utf8", C, b'{"prompt": "\xff\xfe"}', 400, None),
    ("lone-surrogate", C, raw('{"prompt": "\\ud800"}'), 400, None),
    ("empty-body", C, b"", 400, None),
    ("not-json", C, b"hello", 400, None),
    ("truncated-json", C, b'{"prompt": "x", "max_tok', 400, None),
    ("body-over-cap", C, comp(prompt="x" * (1 << 20)), 413, None),
    ("prompt-text-over-64-chars-per-token", C, comp(prompt="y" * (64 * CTX + 1)), 400, "prompt"),
    ("messages-text-over-64-chars-per-token", CHAT,
     {"messages": [{"role": "user", "content": "y" * (64 * CTX + 1)}]}, 400, "messages"),
    ("messages-too-many", CHAT, {"messages": [{"role": "user", "content": ""}] * 16_385}, 400,
     "messages"),
    ("messages-empty", CHAT, {"messages": []}, 400, "messages"),
    ("role-unknown", CHAT, {"messages": [{"role": "wizard", "content": "x"}]}, 400,
     "messages.0.role"),
    ("role-missing", CHAT, {"messages": [{"content": "x"}]}, 400, "messages.0.role"),
    ("content-image", CHAT, {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://x"}}]}]}, 400, "messages.0.content"),
    ("model-name-too-long", C, comp(model="m" * 300), 400, "model"),
    ("model-unknown", C, comp(model="gpt-9"), 404, "model"),
    ("user-too-long", C, comp(user="u" * 2000), 400, "user"),
    # -- tool and logprob fields: refused by name, never ignored (not yet supported) --------
    ("tools", CHAT, chat(tools=[TOOL]), 400, "tools"),
    ("tool_choice-auto", CHAT, chat(tool_choice="auto"), 400, "tool_choice"),
    ("tool_choice-none", CHAT, chat(tool_choice="none", tools=[]), 200, None),
    ("functions", CHAT, chat(functions=[TOOL["function"]]), 400, "functions"),
    ("message-tool_calls", CHAT, {"messages": [{"role": "assistant", "content": None,
                                                "tool_calls": [{"id": "1"}]}]}, 400,
     "messages.0.tool_calls"),
    ("response_format-json", CHAT, chat(response_format={"type": "json_object"}), 400,
     "response_format"),
    ("response_format-text", CHAT, chat(response_format={"type": "text"}), 200, None),
    ("logprobs-chat", CHAT, chat(logprobs=True), 400, "logprobs"),
    ("logprobs-completion", C, comp(logprobs=5), 400, "logprobs"),
    ("top_logprobs", CHAT, chat(top_logprobs=5), 400, "top_logprobs"),
    ("logit_bias", C, comp(logit_bias={"50": 10}), 400, "logit_bias"),
    ("top_k", C, comp(top_k=40), 400, "top_k"),
    ("use_beam_search", C, comp(use_beam_search=True), 400, "use_beam_search"),
    ("best_of", C, comp(best_of=3), 400, "best_of"),
    ("echo", C, comp(echo=True), 400, "echo"),
    ("suffix", C, comp(suffix="x"), 400, "suffix"),
    # -- sanity: valid requests pass -------------------------------------------------------
    ("valid-completion", C, comp(), 200, None),
    ("valid-chat-parts", CHAT, {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}], "max_tokens": 2}, 200, None),
]


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with ServerProcess("--max-model-len", str(CTX), "--eos-after-tokens", "8",
                       "--header-timeout-s", "1", "--body-timeout-s", "1",
                       "--keep-alive-timeout-s", "1", "--max-body-bytes", "1MiB",
                       "--max-header-bytes", "16KiB", "--max-connections", "64") as srv:
        yield srv
        assert srv.alive()
        assert "Traceback" not in srv.log(), srv.log()[-3000:]


def assert_error(raw_body: bytes, status: int, param: str | None) -> None:
    err = json.loads(raw_body)["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if param is not None:
        assert err["param"] == param, err
    if status == 400:
        assert err["type"] == "invalid_request_error"


@pytest.mark.parametrize(("path", "body", "status", "param"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_hostile_body(server: ServerProcess, path: str, body: Any, status: int,
                      param: str | None) -> None:
    got, _, raw_body = server.request("POST", path, body)
    assert got == status, raw_body[:500]
    if status != 200:
        assert_error(raw_body, status, param)
    assert server.normal_request_succeeds()


def test_declared_oversized_body_is_413_before_it_is_sent(server: ServerProcess) -> None:
    with server.connect() as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 50000000\r\n\r\n{")
        data, _ = read_until_closed(sock, 10)
    assert status_of(data) == 413
    assert server.normal_request_succeeds()


def test_chunked_oversized_body_is_413(server: ServerProcess) -> None:
    chunk = b"x" * 65536
    with server.connect() as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        try:
            for _ in range(20):  # 1.25 MiB > the 1 MiB cap
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except (BrokenPipeError, ConnectionResetError):
            pass
        data, _ = read_until_closed(sock, 10)
    assert status_of(data) == 413
    assert server.normal_request_succeeds()


@pytest.mark.parametrize(("name", "request_bytes", "status"), [
    ("garbage-request-line", b"GARBAGE\r\n\r\n", 400),
    ("bad-content-length", b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400),
    ("head-over-cap", b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n", 431),
    ("many-headers-over-cap", b"GET /health HTTP/1.1\r\n" + b"X-A: b\r\n" * 3000 + b"\r\n", 431),
    ("wrong-method", b"GET /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 405),
    ("unknown-path", b"GET /v2/nothing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 404),
])
def test_malformed_http(server: ServerProcess, name: str, request_bytes: bytes, status: int) -> None:
    with server.connect() as sock:
        sock.sendall(request_bytes)
        data, _ = read_until_closed(sock, 10)
    assert status_of(data) == status, data[:300]
    assert server.normal_request_succeeds()


def test_head_growing_past_the_cap_is_431_before_it_ends(server: ServerProcess) -> None:
    with server.connect() as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        try:
            for _ in range(40):  # 40 x 1 KiB headers, never finished
                sock.sendall(b"X-Pad: " + b"p" * 1024 + b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        data, _ = read_until_closed(sock, 10)
    assert status_of(data) == 431
    assert server.normal_request_succeeds()


@pytest.mark.parametrize("what", ["idle", "partial-head", "slow-body", "keep-alive-idle"])
def test_slow_and_idle_connections_are_closed(server: ServerProcess, what: str) -> None:
    with server.connect() as sock:
        if what == "partial-head":
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
        elif what == "slow-body":
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"pro")
        elif what == "keep-alive-idle":
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        data, waited_s = read_until_closed(sock, 20)
    assert waited_s < 15  # closed by the server (1 s timeouts), not by our read timeout
    expected = {"idle": 408, "partial-head": 408, "slow-body": 408, "keep-alive-idle": 200}
    assert status_of(data) == expected[what], data[:300]
    if what != "keep-alive-idle":
        assert json.loads(data.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "request_timeout"
    assert server.normal_request_succeeds()


def test_slow_body_that_keeps_trickling_is_cut_off(server: ServerProcess) -> None:
    """One byte every 0.1 s never leaves the connection idle for long, but the whole body
    must arrive within the (1 s) body timeout: the server answers 408 and closes."""
    answer = b""
    with server.connect() as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n")
        sock.settimeout(0.1)
        start = time.monotonic()
        while time.monotonic() - start < 10:
            try:
                sock.sendall(b" ")
                answer += sock.recv(4096)
                break  # the server answered (or closed: recv returned b"")
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
        elapsed_s = time.monotonic() - start
    assert elapsed_s < 10 and status_of(answer) == 408, answer[:200]
    assert server.normal_request_succeeds()


def test_connections_beyond_the_cap_get_503(server: ServerProcess) -> None:
    held = [server.connect() for _ in range(64)]
    try:
        time.sleep(0.2)  # let the server accept them all
        with server.connect() as extra:
            data, _ = read_until_closed(extra, 10)
        assert status_of(data) == 503, data[:200]
        assert b"retry-after: 1" in data.lower()
        assert json.loads(data.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "too_many_connections"
    finally:
        for s in held:
            s.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the held ones are gone: the cap admits again
        try:
            if server.normal_request_succeeds():
                break
        except (ConnectionError, OSError):
            pass
        time.sleep(0.1)
    assert server.normal_request_succeeds()


def test_idle_connections_do_not_accumulate(server: ServerProcess) -> None:
    """What the issue measured: many idle and slow connections, all still held 30 s later.
    Now every one is closed by the server within the (1 s) header timeout."""
    socks = [server.connect() for _ in range(40)]
    for i, s in enumerate(socks):
        if i % 2:
            s.sendall(b"POST /v1/completions HTTP/1.1\r\n")
    try:
        closed = 0
        for s in socks:
            _, waited_s = read_until_closed(s, 15)
            closed += int(waited_s < 15)
        assert closed == len(socks)
    finally:
        for s in socks:
            s.close()
    assert server.normal_request_succeeds()
