"""Run an app with uvicorn; drain gracefully on SIGTERM / SIGINT.

First signal: stop admitting (new generation requests get 503, /ready 503), let in-flight
requests finish for up to `drain_timeout_s`, then close the listener and run the lifespan
shutdown (which stops the backend, i.e. the cluster's processes). A second signal exits at once.

`python -m dualpath.server.run` serves the echo backend (tests and `dualpath bench frontend`
start it as a separate process).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import socket
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI

from dualpath.core.errors import UserInputError
from dualpath.server.app import ServerState, create_app
from dualpath.server.backend import AdmissionLimits, Backend
from dualpath.server.http_limits import HttpLimits, add_http_arguments, http_limits_from_args
from dualpath.server.memory import pin_malloc_thresholds

logger = logging.getLogger(__name__)


def banner(host: str, port: int, model_name: str, api_key: str | None) -> str:
    """Where the server listens and how to call it (printed by the CLI when ready)."""
    auth = ' -H "Authorization: Bearer $DUALPATH_API_KEY"' if api_key else ""
    url = f"http://{host}:{port}"
    return (
        f"DualPath OpenAI-compatible server listening on {url} (model: {model_name})\n"
        f"  try: curl -s {url}/v1/chat/completions -H 'Content-Type: application/json'{auth} \\\n"
        f"         -d '{{\"model\": \"{model_name}\", \"messages\": "
        f"[{{\"role\": \"user\", \"content\": \"Hello!\"}}], \"max_tokens\": 32}}'\n"
        f"  endpoints: /v1/completions /v1/chat/completions /v1/models /health /ready /metrics\n"
        f"  stop: Ctrl-C or SIGTERM (drains in-flight requests first)"
    )


class DrainingServer(uvicorn.Server):
    """uvicorn.Server whose first exit signal drains instead of stopping at once."""

    def __init__(self, config: uvicorn.Config, state: ServerState, drain_timeout_s: float,
                 on_ready: Callable[[int], None] | None = None) -> None:
        super().__init__(config)
        self._state = state
        self._drain_timeout_s = drain_timeout_s
        self._on_ready = on_ready
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_task: asyncio.Task[None] | None = None
        self.bound_port: int | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)
        if self.servers and self.servers[0].sockets:
            self.bound_port = int(self.servers[0].sockets[0].getsockname()[1])
            if self._on_ready is not None:
                self._on_ready(self.bound_port)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._drain_task is None and not self.should_exit and self._loop is not None:
            self._loop.call_soon_threadsafe(self.begin_drain)
            return
        super().handle_exit(sig, frame)  # second signal (or not started yet): exit now

    def begin_drain(self) -> None:
        """Start draining (idempotent); the server exits when in-flight requests are done."""
        if self._drain_task is None:
            self._state.start_draining()
            self._drain_task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        logger.info("draining: %d request(s) in flight", self._state.in_flight)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._drain_timeout_s
        while self._state.in_flight > 0 and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if self._state.in_flight:
            logger.warning("drain timeout: %d request(s) still in flight", self._state.in_flight)
        self.should_exit = True


def _http_protocol(limits: HttpLimits) -> Any:
    """httptools with coalesced writes and our connection limits (`http_guard`); uvicorn's
    h11 (head size capped, no read timeouts) only where httptools is not installed."""
    try:
        from dualpath.server.http_guard import guarded_protocol
    except ImportError:  # pragma: no cover - httptools is a declared dependency
        logger.warning("httptools is not installed: HTTP read timeouts and the connection "
                       "cap are not enforced")
        return "h11"
    return guarded_protocol(limits)


def make_server(app: FastAPI, *, host: str = "127.0.0.1", port: int = 8000,
                drain_timeout_s: float = 30.0, log_level: str = "warning",
                on_ready: Callable[[int], None] | None = None,
                limits: HttpLimits | None = None) -> DrainingServer:
    """A configured server for `app` (uvloop + httptools, no access log) enforcing `limits`.

    `limits.max_body_bytes` is enforced by the app (`create_app(max_body_bytes=...)`).
    """
    limits = limits or HttpLimits()
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False,
                            http=_http_protocol(limits),
                            timeout_graceful_shutdown=max(1, int(drain_timeout_s)),
                            backlog=4096, timeout_keep_alive=max(1, round(limits.keep_alive_timeout_s)),
                            h11_max_incomplete_event_size=limits.max_header_bytes)
    return DrainingServer(config, app.state.dualpath, drain_timeout_s, on_ready)


def run_server(
    backend: Backend,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    max_queue: int | None = None,
    max_running: int | None = None,
    served_model_name: str | None = None,
    drain_timeout_s: float = 30.0,
    log_level: str = "warning",
    announce: Callable[[str], None] | None = None,
    http_limits: HttpLimits | None = None,
) -> None:
    """Serve `backend` until SIGTERM/SIGINT, then drain and stop. Blocks (main thread).

    `announce` receives `banner(...)` once the socket is bound (the CLI passes `print`).
    """
    limits = http_limits or HttpLimits()
    pin_malloc_thresholds()  # large request buffers go back to the OS when freed (memory.py)
    app = create_app(backend, api_key=api_key, max_queue=max_queue, max_running=max_running,
                     served_model_name=served_model_name, max_body_bytes=limits.max_body_bytes)
    model = app.state.dualpath.model_name

    def ready(bound: int) -> None:
        text = banner(host, bound, model, api_key)
        (announce or logger.warning)(text)

    server = make_server(app, host=host, port=port, drain_timeout_s=drain_timeout_s,
                         log_level=log_level, on_ready=ready, limits=limits)
    server.run()


def load_backend(spec: str) -> Backend:
    """`module:factory` -> the Backend that `factory()` returns."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise UserInputError(f"--backend must look like MODULE:FACTORY, got {spec!r}")
    factory = getattr(importlib.import_module(module_name), attr)
    backend = factory()
    if not isinstance(backend, Backend):
        raise UserInputError(f"{spec}() returned {type(backend).__name__}, not a Backend")
    return backend


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the echo backend: `python -m dualpath.server.run --port 0 --token-delay-s 0.01`."""
    from dualpath.server.echo_backend import EchoBackend

    p = argparse.ArgumentParser(prog="python -m dualpath.server.run")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None)
    p.add_argument("--max-running", type=int, default=256,
                   help="requests handed to the backend at once [256]")
    p.add_argument("--max-queue", type=int, default=1024,
                   help="requests that may wait for a running slot before HTTP 429 [1024]")
    p.add_argument("--token-delay-s", type=float, default=0.0)
    p.add_argument("--prefill-delay-s", type=float, default=0.0)
    p.add_argument("--eos-after-tokens", type=int, default=None)
    p.add_argument("--max-model-len", type=int, default=4096)
    p.add_argument("--drain-timeout-s", type=float, default=30.0)
    p.add_argument("--backend", default=None, metavar="MODULE:FACTORY",
                   help="serve FACTORY() (a Backend) instead of the echo backend")
    add_http_arguments(p)
    args = p.parse_args(argv)
    try:
        limits = http_limits_from_args(args)
        admission = AdmissionLimits(max_running=args.max_running, max_waiting=args.max_queue)
    except UserInputError as exc:
        p.error(str(exc))
    backend: Backend
    if args.backend:
        backend = load_backend(args.backend)
    else:
        backend = EchoBackend(
            token_delay_s=args.token_delay_s, prefill_delay_s=args.prefill_delay_s,
            eos_after_tokens=args.eos_after_tokens, max_model_len=args.max_model_len,
            admission=admission,
        )
    run_server(backend, host=args.host, port=args.port, api_key=args.api_key,
               max_running=args.max_running, max_queue=args.max_queue,
               drain_timeout_s=args.drain_timeout_s, announce=_print_flush, http_limits=limits)
    return 0


def _print_flush(text: str) -> None:
    print(text, flush=True)  # the entry point's own output (a parent process reads the port)


if __name__ == "__main__":
    raise SystemExit(main())
