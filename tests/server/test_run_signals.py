"""`python -m dualpath.server.run` as a real process: SIGTERM drains, then it exits cleanly."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading

import pytest


def start(*extra: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "dualpath.server.run", "--port", "0", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    banner = proc.stdout.readline()
    assert "listening on http://127.0.0.1:" in banner, banner
    port = int(banner.split("http://127.0.0.1:")[1].split()[0])
    return proc, port


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_drains_in_flight_then_exits(sig: signal.Signals) -> None:
    proc, port = start("--token-delay-s", "0.02")
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("POST", "/v1/completions",
                     json.dumps({"prompt": "long job", "max_tokens": 50, "stream": True}),
                     {"Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.readline().startswith(b"data: ")  # generation has started
        proc.send_signal(sig)
        lines: list[bytes] = []
        reader = threading.Thread(target=lambda: lines.extend(resp.readlines()))
        reader.start()
        reader.join(timeout=30)
        body = b"".join(lines)
        assert body.rstrip().endswith(b"data: [DONE]")
        assert b'"finish_reason":"length"' in body
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_banner_shows_how_to_call() -> None:
    proc, port = start("--api-key", "k")
    try:
        assert proc.stdout is not None
        rest = [proc.stdout.readline() for _ in range(4)]
        text = "".join(rest)
        assert f"curl -s http://127.0.0.1:{port}/v1/chat/completions" in text
        assert "Authorization: Bearer" in text and "/metrics" in text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
