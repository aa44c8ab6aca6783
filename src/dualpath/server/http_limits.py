"""`HttpLimits`: what one HTTP server accepts from its clients, and the flags that set it.

Light on purpose (no uvicorn/fastapi import): `dualpath serve` registers these flags on every
CLI start. The limits are enforced by `http_guard.GuardedHttpToolsProtocol` (timeouts,
connections, head size) and `app.py` (body size).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

from dualpath.core.errors import UserInputError
from dualpath.core.units import parse_bytes


@dataclass(frozen=True)
class HttpLimits:
    """Per-server HTTP limits; every one has a default that suits a public-facing server."""

    header_timeout_s: float = 10.0  # connection open / first byte -> request head complete
    body_timeout_s: float = 60.0  # head complete -> whole body received
    keep_alive_timeout_s: float = 5.0  # idle time between requests on one connection
    max_connections: int = 2048  # open connections; more are answered 503 and closed
    max_header_bytes: int = 64 * 1024  # request line + headers; more is 431
    max_body_bytes: int = 64 * 1024 * 1024  # request body; more is 413

    def __post_init__(self) -> None:
        for name in ("header_timeout_s", "body_timeout_s", "keep_alive_timeout_s"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise UserInputError(f"{name} must be a positive number of seconds, got {value}")
        for name in ("max_connections", "max_header_bytes", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise UserInputError(f"{name} must be >= 1, got {getattr(self, name)}")


_DEFAULTS = HttpLimits()


def add_http_arguments(p: argparse.ArgumentParser) -> None:
    """The HTTP limit flags (shared by `dualpath serve` and `python -m dualpath.server.run`)."""
    d = _DEFAULTS
    p.add_argument("--header-timeout-s", type=float, default=d.header_timeout_s,
                   help="a request head must arrive within this (else 408, closed) "
                        f"[{d.header_timeout_s:g}]")
    p.add_argument("--body-timeout-s", type=float, default=d.body_timeout_s,
                   help=f"a request body must arrive within this (else 408) [{d.body_timeout_s:g}]")
    p.add_argument("--keep-alive-timeout-s", type=float, default=d.keep_alive_timeout_s,
                   help=f"idle connections are closed after this [{d.keep_alive_timeout_s:g}]")
    p.add_argument("--max-connections", type=int, default=d.max_connections,
                   help=f"open connections; more get 503 and are closed [{d.max_connections}]")
    p.add_argument("--max-header-bytes", default=str(d.max_header_bytes), metavar="SIZE",
                   help="request line + headers, e.g. 64KiB (else 431) [64KiB]")
    p.add_argument("--max-body-bytes", default=str(d.max_body_bytes), metavar="SIZE",
                   help="request body, e.g. 64MiB (else 413) [64MiB]")


def http_limits_from_args(args: argparse.Namespace) -> HttpLimits:
    return HttpLimits(
        header_timeout_s=args.header_timeout_s, body_timeout_s=args.body_timeout_s,
        keep_alive_timeout_s=args.keep_alive_timeout_s, max_connections=args.max_connections,
        max_header_bytes=parse_bytes(args.max_header_bytes),
        max_body_bytes=parse_bytes(args.max_body_bytes),
    )
