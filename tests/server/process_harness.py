"""`python -m dualpath.server.run` (the echo backend) as a real server process, for tests that
need one: hostile clients, overload and memory, HTTP limits."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any


class ServerProcess:
    """A started echo server; `stop()` (or the context manager) ends it."""

    def __init__(self, *args: str) -> None:
        self._log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - lives as long as the server
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dualpath.server.run", "--port", "0", *args],
            stdout=subprocess.PIPE, stderr=self._log, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert self.proc.stdout is not None
        banner = self.proc.stdout.readline()
        if "listening on http://127.0.0.1:" not in banner:
            self.stop()
            raise RuntimeError(f"server did not start: {banner!r} {self.log()[-2000:]}")
        self.port = int(banner.split("http://127.0.0.1:")[1].split()[0])

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.close_log()

    def log(self) -> str:
        self._log.seek(0)
        return self._log.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def close_log(self) -> None:
        self._log.close()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def rss_bytes(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def request(self, method: str, path: str, body: Any = None,
                headers: dict[str, str] | None = None,
                timeout_s: float = 30) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout_s)
        try:
            data = body if isinstance(body, bytes | None) else json.dumps(body).encode()
            conn.request(method, path, body=data,
                         headers={"Content-Type": "application/json", **(headers or {})})
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def post(self, path: str, body: Any) -> tuple[int, Any]:
        status, _, raw = self.request("POST", path, body)
        return status, json.loads(raw) if raw else None

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=30)

    def normal_request_succeeds(self) -> bool:
        status, body = self.post("/v1/completions", {"prompt": "ok?", "max_tokens": 2})
        return status == 200 and body["usage"]["completion_tokens"] == 2


def read_until_closed(sock: socket.socket, timeout_s: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took."""
    start = time.monotonic()
    sock.settimeout(timeout_s)
    chunks: list[bytes] = []
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    except (ConnectionResetError, BrokenPipeError):
        pass
    return b"".join(chunks), time.monotonic() - start


def status_of(raw: bytes) -> int | None:
    """The status code of the first HTTP response in `raw` (None if there is none)."""
    if not raw.startswith(b"HTTP/1.1 "):
        return None
    return int(raw[9:12])
