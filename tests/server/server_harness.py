"""A real uvicorn server on 127.0.0.1 (ephemeral port) in a background thread."""

from __future__ import annotations

import http.client
import json
import threading
from typing import Any

from dualpath.server.app import ServerState, create_app
from dualpath.server.backend import Backend
from dualpath.server.http_limits import HttpLimits
from dualpath.server.run import DrainingServer, make_server


class RunningServer:
    def __init__(self, server: DrainingServer, thread: threading.Thread, port: int) -> None:
        self.server = server
        self.thread = thread
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    @property
    def state(self) -> ServerState:
        return self.server.config.app.state.dualpath  # type: ignore[no-any-return]

    def request(self, method: str, path: str, body: Any = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            data = body if isinstance(body, bytes | None) else json.dumps(body).encode()
            hdrs = {"Content-Type": "application/json", **(headers or {})}
            conn.request(method, path, body=data, headers=hdrs)
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def post_json(self, path: str, body: Any, headers: dict[str, str] | None = None
                  ) -> tuple[int, Any]:
        status, _, raw = self.request("POST", path, body, headers)
        return status, json.loads(raw)

    def metric(self, name: str, labels: str = "") -> float:
        """Value of one sample of /metrics, e.g. metric("dualpath_buffer_bytes_in_use", 'node="echo"')."""
        _, _, raw = self.request("GET", "/metrics")
        want = f"{name}{{{labels}}}" if labels else name
        for line in raw.decode().splitlines():
            if line.startswith("#"):
                continue
            key, _, value = line.rpartition(" ")
            if key == want or (not labels and key.split("{")[0] == name):
                return float(value)
        raise KeyError(want)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def start_server(backend: Backend, *, limits: HttpLimits | None = None,
                 **kwargs: Any) -> RunningServer:
    app = create_app(backend, **kwargs)
    ready = threading.Event()
    ports: list[int] = []

    def on_ready(port: int) -> None:
        ports.append(port)
        ready.set()

    server = make_server(app, host="127.0.0.1", port=0, drain_timeout_s=5, on_ready=on_ready,
                         limits=limits)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    if not ready.wait(30):
        raise RuntimeError("server did not start")
    return RunningServer(server, thread, ports[0])
