"""OpenAI-format error responses: `{"error": {"message", "type", "param", "code"}}`.

Handlers raise `APIError`; the app's exception handlers (and the auth middleware, which runs
before routing) turn it, FastAPI's validation errors and Starlette's 404/405 into this body.
"""

from __future__ import annotations

from typing import Any

from dualpath.server.json_bytes import dumps

# status -> (OpenAI error type, default code)
_TYPES: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "invalid_parameter"),
    401: ("invalid_request_error", "invalid_api_key"),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    408: ("invalid_request_error", "request_timeout"),
    413: ("invalid_request_error", "request_too_large"),
    431: ("invalid_request_error", "headers_too_large"),
    429: ("rate_limit_error", "queue_full"),
    500: ("server_error", "internal_error"),
    503: ("service_unavailable", "draining"),
}


class APIError(Exception):
    """An error to send to the client as an OpenAI error object with `status`."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, param=self.param, code=self.code)


def error_body(
    status: int, message: str, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """The JSON object of an error response."""
    err_type, default_code = _TYPES.get(status, ("invalid_request_error", "error"))
    return {
        "error": {
            "message": message,
            "type": err_type,
            "param": param,
            "code": code if code is not None else default_code,
        }
    }


def error_bytes(status: int, message: str, **kwargs: Any) -> bytes:
    return dumps(error_body(status, message, **kwargs))
