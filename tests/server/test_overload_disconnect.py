"""Admission (429 when the queue is full, 503 while draining) and client disconnects."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Callable

import openai
import pytest
from server_harness import RunningServer

from dualpath.server.echo_backend import EchoBackend

Serve = Callable[..., RunningServer]


def wait_until(cond: Callable[[], bool], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.02)


def background_post(srv: RunningServer, body: dict, results: list) -> threading.Thread:
    def go() -> None:
        results.append(srv.post_json("/v1/completions", body))

    t = threading.Thread(target=go)
    t.start()
    return t


def test_full_queue_gets_429_with_retry_after(serve: Serve) -> None:
    srv = serve(EchoBackend(token_delay_s=0.02), max_running=1, max_queue=1)
    slow = {"prompt": "slow", "max_tokens": 40}
    results: list = []
    a = background_post(srv, slow, results)
    wait_until(lambda: srv.metric("vllm:num_requests_running") == 1)
    b = background_post(srv, slow, results)
    wait_until(lambda: srv.metric("vllm:num_requests_waiting") == 1)
    status, headers, raw = srv.request("POST", "/v1/completions", slow)
    assert status == 429
    assert int(headers["retry-after"]) >= 1
    assert json.loads(raw)["error"]["type"] == "rate_limit_error"
    c = openai.OpenAI(base_url=srv.url + "/v1", api_key="k", max_retries=0)
    with pytest.raises(openai.RateLimitError):
        c.completions.create(model="echo", prompt="x", max_tokens=1)
    a.join()
    b.join()
    assert [r[0] for r in results] == [200, 200]
    assert all(r[1]["usage"]["completion_tokens"] == 40 for r in results)
    assert srv.metric("dualpath_requests_rejected_total", 'reason="queue_full"') == 2
    assert srv.post_json("/v1/completions", {"prompt": "x", "max_tokens": 1})[0] == 200


def test_draining_refuses_new_work_and_finishes_in_flight(serve: Serve) -> None:
    srv = serve(EchoBackend(token_delay_s=0.02))
    results: list = []
    a = background_post(srv, {"prompt": "long", "max_tokens": 30}, results)
    wait_until(lambda: srv.metric("vllm:num_requests_running") == 1)
    loop = srv.server._loop
    assert loop is not None
    loop.call_soon_threadsafe(srv.server.begin_drain)
    wait_until(lambda: srv.state.admission.draining)
    status, headers, raw = srv.request("POST", "/v1/completions", {"prompt": "new"})
    assert status == 503 and "retry-after" in headers
    assert json.loads(raw)["error"]["code"] == "draining"
    status, _, raw = srv.request("GET", "/ready")
    assert status == 503 and json.loads(raw)["reasons"] == ["draining"]
    assert srv.request("GET", "/health")[0] == 200  # alive while draining: not a restart
    a.join()
    assert results[0][0] == 200 and results[0][1]["usage"]["completion_tokens"] == 30
    srv.thread.join(timeout=15)
    assert not srv.thread.is_alive()  # drained, then stopped by itself


def test_stream_disconnect_aborts_and_frees_buffers(serve: Serve) -> None:
    backend = EchoBackend(token_delay_s=0.01)
    srv = serve(backend)
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    body = {"prompt": "p" * 100, "max_tokens": 3000, "stream": True}
    conn.request("POST", "/v1/completions", json.dumps(body),
                 {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200
    for _ in range(3):
        assert resp.readline().startswith(b"data: ")
        resp.readline()
    assert srv.metric("dualpath_buffer_bytes_in_use", 'node="echo"') == 100 * 64
    assert srv.metric("vllm:num_requests_running") == 1
    conn.sock.shutdown(socket.SHUT_RDWR)  # type: ignore[union-attr]
    conn.close()
    wait_until(lambda: srv.metric("dualpath_buffer_bytes_in_use", 'node="echo"') == 0)
    wait_until(lambda: srv.metric("vllm:request_success_total",
                                  'finished_reason="abort",model_name="echo"') == 1)
    assert srv.metric("vllm:num_requests_running") == 0
    assert len(backend.aborted_ids) == 1
    assert srv.state.in_flight == 0
    assert srv.post_json("/v1/completions", {"prompt": "x", "max_tokens": 2})[0] == 200


def test_non_streamed_disconnect_aborts(serve: Serve) -> None:
    backend = EchoBackend(token_delay_s=0.01)
    srv = serve(backend)
    payload = json.dumps({"prompt": "q" * 50, "max_tokens": 3000}).encode()
    sock = socket.create_connection(("127.0.0.1", srv.port))
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
    wait_until(lambda: srv.metric("dualpath_buffer_bytes_in_use", 'node="echo"') == 50 * 64)
    sock.close()
    wait_until(lambda: srv.metric("dualpath_buffer_bytes_in_use", 'node="echo"') == 0)
    wait_until(lambda: len(backend.aborted_ids) == 1)
    assert srv.metric("vllm:request_success_total",
                      'finished_reason="abort",model_name="echo"') == 1
    assert srv.state.in_flight == 0


def test_queued_request_whose_client_leaves_frees_its_place(serve: Serve) -> None:
    backend = EchoBackend(token_delay_s=0.01)
    srv = serve(backend, max_running=1, max_queue=1)
    running = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    running.request("POST", "/v1/completions",
                    json.dumps({"prompt": "a", "max_tokens": 3000, "stream": True}),
                    {"Content-Type": "application/json"})
    assert running.getresponse().status == 200
    payload = json.dumps({"prompt": "b", "max_tokens": 5}).encode()
    sock = socket.create_connection(("127.0.0.1", srv.port))
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
    wait_until(lambda: srv.metric("vllm:num_requests_waiting") == 1)
    sock.close()
    wait_until(lambda: srv.metric("vllm:num_requests_waiting") == 0)
    assert srv.metric("vllm:num_requests_running") == 1  # the first request still streams
    assert backend.aborted_ids == []
    # Its place is free again: a new request may queue instead of getting 429.
    results: list = []
    t = background_post(srv, {"prompt": "c", "max_tokens": 1}, results)
    wait_until(lambda: srv.metric("vllm:num_requests_waiting") == 1)
    running.sock.shutdown(socket.SHUT_RDWR)  # type: ignore[union-attr]
    running.close()
    t.join()
    assert results[0][0] == 200
    wait_until(lambda: srv.state.in_flight == 0)
