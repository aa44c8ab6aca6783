"""Fixtures of the server tests: `serve(backend, **create_app_kwargs)` starts a real server."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from server_harness import RunningServer, start_server

from dualpath.server.backend import Backend


@pytest.fixture

def serve() -> Iterator[Callable[..., RunningServer]]:
    """serve(backend, **create_app_kwargs) -> RunningServer; stopped after the test."""
    started: list[RunningServer] = []

    def _serve(backend: Backend, **kwargs: Any) -> RunningServer:
        srv = start_server(backend, **kwargs)
        started.append(srv)
        return srv

    yield _serve
    for srv in started:
        srv.stop()
