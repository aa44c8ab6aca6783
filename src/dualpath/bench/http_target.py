"""The OpenAI-compatible server as a benchmark target (aiohttp, many concurrent streams).

Each turn is one streamed `POST {url}/v1/completions` with the prompt as a token-id list,
`max_tokens = min_tokens = recorded length`, `ignore_eos: true`, `temperature: 0` and the
extension `return_token_ids: true` (contract 4: every streamed choice carries the token ids
of that chunk). TTFT is the first chunk with tokens, TTST the chunk that brings the second
token, the end the last chunk. `usage.prompt_tokens_details.cached_tokens`, when the server
sends it (`stream_options.include_usage`), becomes the turn's cached tokens.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from dualpath.bench.target import Target, TurnRequest, TurnResult
from dualpath.core.errors import EngineError, UserInputError

log = logging.getLogger(__name__)


class HttpTarget(Target):
    needs_token_ids = True

    def __init__(self, url: str, *, model: str | None = None, max_connections: int = 4096,
                 timeout_s: float = 3600.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise UserInputError(f"--url must start with http:// or https://, got {url!r}")
        self.url = url.rstrip("/")
        self.model = model
        self._max_connections = max_connections
        self._timeout_s = timeout_s
        self._session: Any = None
        self._lock = asyncio.Lock()

    def describe(self) -> dict[str, object]:
        return {"target": "http", "url": self.url, "served_model": self.model}

    async def _get_session(self) -> Any:
        async with self._lock:
            if self._session is None:
                import aiohttp

                self._session = aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=self._max_connections),
                    timeout=aiohttp.ClientTimeout(total=self._timeout_s),
                )
                if self.model is None:
                    self.model = await self._first_model()
            return self._session

    async def _first_model(self) -> str:
        import aiohttp

        try:
            async with self._session.get(f"{self.url}/v1/models") as resp:
                body = await resp.json(content_type=None)
        except aiohttp.ClientError as exc:
            raise UserInputError(f"cannot reach the server at {self.url}: {exc}") from None
        try:
            return str(body["data"][0]["id"])
        except (KeyError, IndexError, TypeError):
            raise EngineError(f"{self.url}/v1/models lists no model; pass --served-model") from None

    async def run_turn(self, request: TurnRequest) -> TurnResult:
        import aiohttp

        if request.prompt_token_ids is None:
            raise EngineError("the HTTP target needs prompt token ids")
        session = await self._get_session()
        body = {
            "model": self.model,
            "prompt": list(request.prompt_token_ids),
            "max_tokens": request.gen_tokens,
            "min_tokens": request.gen_tokens,
            "ignore_eos": True,
            "temperature": 0.0,
            "stream": True,
            "stream_options": {"include_usage": True},
            "return_token_ids": True,
        }
        loop = asyncio.get_running_loop()
        first: float | None = None
        second: float | None = None
        ids: list[int] = []
        cached = 0
        try:
            async with session.post(f"{self.url}/v1/completions", json=body) as resp:
                if resp.status != 200:
                    text = (await resp.text())[:300]
                    raise EngineError(f"server answered HTTP {resp.status}: {text}")
                async for chunk in sse_json(resp):
                    cached = _cached_tokens(chunk, cached)
                    new = _chunk_token_ids(chunk)
                    if not new:
                        continue
                    now = loop.time()
                    if first is None:
                        first = now
                    ids.extend(new)
                    if second is None and len(ids) >= 2:
                        second = now
        except aiohttp.ClientError as exc:
            raise UserInputError(f"request to {self.url} failed: {exc}") from None
        end = loop.time()
        if first is None:
            raise EngineError("the server streamed no tokens for a turn")
        return TurnResult(first, second, end, len(ids), cached, tuple(ids))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


async def sse_json(resp: Any) -> AsyncIterator[Any]:
    """The JSON payloads of a streamed (server-sent events) response's `data:` lines, up to
    `[DONE]`."""
    async for raw in resp.content:
        line = raw.decode("utf-8", "replace").strip()
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        yield json.loads(data)


def _chunk_token_ids(chunk: dict[str, Any]) -> list[int]:
    out: list[int] = []
    for choice in chunk.get("choices") or []:
        ids = choice.get("token_ids")
        if ids is None:
            if choice.get("text"):
                raise EngineError(
                    "the server's stream carries no token_ids: it must support the "
                    "'return_token_ids' extension (the next prompt is built from them)"
                )
            continue
        out.extend(int(i) for i in ids)
    return out


def _cached_tokens(chunk: dict[str, Any], previous: int) -> int:
    usage = chunk.get("usage") or {}
    details = usage.get("prompt_tokens_details") or {}
    value = details.get("cached_tokens")
    return int(value) if isinstance(value, int) else previous
