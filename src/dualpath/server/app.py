"""The FastAPI application: routes, auth, OpenAI-format errors, lifespan.

`create_app(backend, ...)` builds a self-contained app (its own metrics registry and admission
queue) around any `Backend`. Endpoints: POST /v1/completions, POST /v1/chat/completions,
GET /v1/models, GET /health (liveness: the process answers), GET /ready (readiness: 503 with
reasons unless the backend says it can serve and the server is not draining), GET /metrics.
Everything under /v1 needs the API key when one is set; /health, /ready and /metrics never do
(probes and scrapers carry no key).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from dualpath.core.errors import UserInputError
from dualpath.server import responses
from dualpath.server.admission import Admission
from dualpath.server.api_errors import APIError, error_body, error_bytes
from dualpath.server.backend import Backend, Readiness
from dualpath.server.memory import IdleTrimmer
from dualpath.server.metrics import ServerMetrics
from dualpath.server.protocol import ChatCompletionRequest, CompletionRequest
from dualpath.server.serving import OpenAIServing

logger = logging.getLogger(__name__)
_JSON = "application/json"
_PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"
_Body = TypeVar("_Body", bound=BaseModel)


@dataclass
class ServerState:
    """What `run.py` and tests reach through `app.state.dualpath`."""

    backend: Backend
    admission: Admission
    metrics: ServerMetrics
    serving: OpenAIServing
    model_name: str

    @property
    def in_flight(self) -> int:
        return self.admission.running + self.admission.waiting

    def start_draining(self) -> None:
        """Refuse new generation requests (503) and report not ready; in-flight ones go on."""
        self.admission.draining = True

    def readiness(self) -> Readiness:
        """The backend's readiness, plus the server's own reason (draining). Never raises."""
        try:
            backend = self.backend.readiness()
        except Exception as exc:  # a broken probe must say so, not take the endpoint down
            logger.warning("backend readiness check failed: %s: %s", type(exc).__name__, exc)
            backend = Readiness(False, (f"readiness check failed: {type(exc).__name__}",))
        reasons = (("draining",) if self.admission.draining else ()) + tuple(backend.reasons)
        return Readiness(backend.ready and not self.admission.draining, reasons)


def create_app(
    backend: Backend,
    *,
    api_key: str | None = None,
    max_queue: int | None = None,
    max_running: int | None = None,
    served_model_name: str | None = None,
    max_body_bytes: int = 64 * 1024 * 1024,
) -> FastAPI:
    """An OpenAI-compatible app serving `backend`.

    max_queue: requests that may wait for a running slot before new ones get 429
    (default: `backend.admission.max_waiting`); max_running: requests handed to the backend
    at once (default: `backend.admission.max_running`); served_model_name: the model id
    clients use (default: `backend.model_name`); max_body_bytes: larger request bodies get
    413 (64 MiB holds a token-id prompt of several million tokens).
    """
    limits = backend.admission
    admission = Admission(max_running if max_running is not None else limits.max_running,
                          max_queue if max_queue is not None else limits.max_waiting)
    model_name = served_model_name or backend.model_name
    metrics = ServerMetrics(model_name, admission, backend)
    serving = OpenAIServing(backend, admission, metrics, model_name)
    state = ServerState(backend, admission, metrics, serving, model_name)

    trimmer = IdleTrimmer(lambda: admission.busy, lambda: admission.admitted_total)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await backend.start()
        trimming = asyncio.get_running_loop().create_task(trimmer.run())
        try:
            yield
        finally:
            trimming.cancel()
            await backend.shutdown()

    # FastAPI's built-in OpenTelemetry hooks cost a few environment lookups per request;
    # /metrics is our telemetry.
    app = FastAPI(title="DualPath OpenAI-compatible API", version="0.1.0", lifespan=lifespan,
                  telemetry={"tracing": False, "metrics": False, "logs": False})
    app.state.dualpath = state
    created = int(time.time())

    # The two generation endpoints are plain Starlette routes: the body goes straight from
    # bytes to the pydantic model in one Rust call (`model_validate_json`), skipping FastAPI's
    # per-request dependency machinery, which was a third of the request cost. Their OpenAPI
    # entries are added in `_openapi` from the same models.
    async def completions(request: Request) -> Response:
        serving.refuse_if_full()
        try:
            raw = await _read_body(request, max_body_bytes)
        except ClientDisconnect:  # gone (or cut off by the body timeout): nobody to answer
            return Response(status_code=499)
        return await serving.completions(await _parse_async(CompletionRequest, raw), request)

    async def chat_completions(request: Request) -> Response:
        serving.refuse_if_full()
        try:
            raw = await _read_body(request, max_body_bytes)
        except ClientDisconnect:
            return Response(status_code=499)
        return await serving.chat(await _parse_async(ChatCompletionRequest, raw), request)

    app.router.routes.insert(0, Route("/v1/completions", completions, methods=["POST"]))
    app.router.routes.insert(1, Route("/v1/chat/completions", chat_completions, methods=["POST"]))
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]

    @app.get("/v1/models")
    async def models() -> Response:
        """The served model, with its context length."""
        card = {"id": model_name, "object": "model", "created": created, "owned_by": "dualpath",
                "root": backend.model_name, "max_model_len": backend.max_model_len}
        return Response(responses.dumps({"object": "list", "data": [card]}), media_type=_JSON)

    @app.get("/health")
    async def health() -> Response:
        """Liveness: 200 whenever the server process answers (also while draining)."""
        return Response(b'{"status":"ok"}', media_type=_JSON)

    @app.get("/ready", responses={503: {"description": "not ready: `{status, reasons}`"}})
    async def ready() -> Response:
        """Readiness: 200 when requests can be served; 503 with the reasons otherwise."""
        r = state.readiness()
        if r.ready:
            return Response(b'{"status":"ready"}', media_type=_JSON)
        body = {"status": "not ready", "reasons": list(r.reasons)}
        return Response(responses.dumps(body), status_code=503, media_type=_JSON,
                        headers={"Retry-After": str(limits.retry_after_s)})

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus_metrics() -> Response:
        """Prometheus text format: vllm:* request metrics and dualpath_* cluster state."""
        return Response(metrics.render(), media_type=_PROMETHEUS)

    _install_error_handlers(app, metrics)
    if api_key:
        app.add_middleware(_ApiKeyMiddleware, api_key=api_key, metrics=metrics)
    return app


_GENERATION_OPS = (
    ("/v1/completions", CompletionRequest, "Text completion (`stream: true`: server-sent events)"),
    ("/v1/chat/completions", ChatCompletionRequest,
     "Chat completion through the model's chat template (`stream: true`: server-sent events)"),
)


async def _read_body(request: Request, limit_bytes: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit_bytes:
        raise APIError(413, f"request body over {limit_bytes} bytes")
    if declared is not None:
        return await request.body()
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():  # chunked upload: count as it arrives
        size += len(chunk)
        if size > limit_bytes:
            raise APIError(413, f"request body over {limit_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


# Bodies above this are parsed on a worker thread: parsing tens of MB takes a good part of a
# second, and the event loop then still gets the GIL every switch interval, so one huge
# request cannot stall every other connection for that long.
_THREAD_PARSE_BYTES = 1 << 20


async def _parse_async(model: type[_Body], raw: bytes) -> _Body:
    if len(raw) < _THREAD_PARSE_BYTES:
        return _parse(model, raw)
    return await asyncio.to_thread(_parse, model, raw)


def _parse(model: type[_Body], raw: bytes) -> _Body:
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        message, param = describe_validation_errors(exc.errors())
        raise APIError(400, message, param=param) from None


# pydantic names the members of a union in an error's location ("str", "list[int]",
# "list[TextContentPart]"); they are not part of the field's path.
_UNION_TAG = re.compile(r"^(str|int|float|bool|none|[a-z-]+\[.*\]|[A-Z]\w*)$")


def describe_validation_errors(errors: Sequence[Any]) -> tuple[str, str | None]:
    """One readable line (and the offending field's path, e.g. `messages.0.role`) from
    pydantic's error list."""
    first = errors[0] if errors else {}
    loc = [str(part) for part in first.get("loc", ())
           if part != "body" and not (isinstance(part, str) and _UNION_TAG.match(part))]
    where = ".".join(loc)
    msg = str(first.get("msg", "invalid request"))
    message = f"{where}: {msg}" if where else msg
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more errors)"
    return message, where or None


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema plus the two Starlette-routed generation operations."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    error = {"description": "OpenAI error object",
             "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    components["Error"] = {"type": "object", "properties": {"error": {"type": "object"}}}
    for path, model, summary in _GENERATION_OPS:
        body_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(body_schema.pop("$defs", {}))
        components[model.__name__] = body_schema
        schema["paths"][path] = {"post": {
            "summary": summary,
            "operationId": model.__name__,
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}},
            "responses": {
                "200": {"description": "a completion object, or text/event-stream chunks"},
                "400": error, "401": error, "404": error, "408": error, "413": error,
                "429": error, "431": error, "500": error, "503": error,
            },
        }}
    app.openapi_schema = schema
    return schema


def _json_error(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(responses.dumps(body), status_code=status, media_type=_JSON, headers=headers)


def _install_error_handlers(app: FastAPI, metrics: ServerMetrics) -> None:
    async def api_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, APIError)
        if exc.status in (400, 404):
            metrics.reject("invalid")
        return _json_error(exc.status, exc.body(), exc.headers)

    async def validation_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        metrics.reject("invalid")
        message, param = describe_validation_errors(exc.errors())
        return _json_error(400, error_body(400, message, param=param))

    async def user_input_error(_: Request, exc: Exception) -> Response:
        metrics.reject("invalid")
        return _json_error(400, error_body(400, str(exc)))

    async def http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        return _json_error(exc.status_code, error_body(exc.status_code, str(exc.detail)),
                           dict(exc.headers or {}))

    async def internal_error(_: Request, exc: Exception) -> Response:
        # Fails this request only; Starlette re-raises afterwards, so uvicorn logs the
        # traceback and closes this one connection, and the server goes on serving.
        return _json_error(500, error_body(500, f"internal error: {type(exc).__name__}"))

    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(UserInputError, user_input_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, internal_error)


class _ApiKeyMiddleware:
    """Pure ASGI check of `Authorization: Bearer <key>` on /v1 paths (cheaper than Starlette's
    BaseHTTPMiddleware, and it runs before the body is parsed, so 401 wins over 400)."""

    def __init__(self, app: ASGIApp, api_key: str, metrics: ServerMetrics) -> None:
        self._app = app
        self._expected = f"Bearer {api_key}".encode()
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1"):
            given = b""
            for name, value in scope["headers"]:
                if name == b"authorization":
                    given = value
                    break
            if not hmac.compare_digest(given, self._expected):
                self._metrics.reject("auth")
                body = error_bytes(401, "missing or invalid API key (send 'Authorization: Bearer KEY')")
                await send({"type": "http.response.start", "status": 401, "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b"Bearer"),
                ]})
                await send({"type": "http.response.body", "body": body})
                return
        await self._app(scope, receive, send)
