"""The router's HTTP side: an OpenAI-compatible proxy (aiohttp) over P and D vLLM instances.

`POST /v1/completions` and `POST /v1/chat/completions`: the prompt's token ids (given, or
from a prefill instance's `/tokenize`), a `Planner` decision, then the same request goes to
the chosen P (`max_tokens` 1, not streamed: it only prefills and relays the KV) and to the
chosen D (the client's request, streamed or not), each with its `kv_transfer_params`; D's
answer is streamed back with `usage.prompt_tokens_details.cached_tokens` = the prompt tokens
whose KV came from the store (P's own report). If P fails before D produced anything, D's
request is cancelled and re-sent without DualPath params (D then computes the prompt itself),
so the client still gets the right answer. `GET /v1/models` is D's, `GET /health` is 200 when
every instance is healthy, `GET /metrics` is ours (`router.metrics`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

import aiohttp
from aiohttp import web

from dualpath.core.errors import DualPathError
from dualpath.integrations.vllm.router.metrics import render_metrics
from dualpath.integrations.vllm.router.placement import Decision, Planner

log = logging.getLogger(__name__)



def _error(status: int, message: str, kind: str = "invalid_request_error") -> web.Response:
    return web.json_response({"error": {"message": message, "type": kind, "param": None,
                                         "code": None}}, status=status)


class RouterApp:
    """The aiohttp application; `planner` holds the scheduling state, `stats` the counters."""

    def __init__(self, planner: Planner, served_model: str, stats: Any,
                 timeout_s: float = 3600.0) -> None:
        self.planner = planner
        self.served_model = served_model
        self.stats = stats  # callable: () -> {instance name: {counter: value}}
        self.timeout_s = timeout_s
        self.fallbacks = 0
        self._session: aiohttp.ClientSession | None = None
        self._rr = 0
        self.app = web.Application(client_max_size=64 << 20)
        self.app.router.add_post("/v1/completions", self._completions)
        self.app.router.add_post("/v1/chat/completions", self._chat)
        self.app.router.add_get("/v1/models", self._models)
        self.app.router.add_get("/health", self._health)
        self.app.router.add_get("/metrics", self._metrics)
        self.app.on_startup.append(self._open)
        self.app.on_cleanup.append(self._close)

    async def _open(self, _app: web.Application) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=4096),
            timeout=aiohttp.ClientTimeout(total=self.timeout_s))

    async def _close(self, _app: web.Application) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None
        return self._session

    # -- endpoints ----------------------------------------------------------------------------

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, "/v1/completions")

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, "/v1/chat/completions")

    async def _models(self, request: web.Request) -> web.StreamResponse:
        d = self.planner.instances[self._decode_index()]
        async with self.session.get(d.url + "/v1/models") as resp:
            return web.Response(body=await resp.read(), status=resp.status,
                                content_type="application/json")

    async def _health(self, request: web.Request) -> web.StreamResponse:
        async def ok(url: str) -> bool:
            try:
                async with self.session.get(url + "/health",
                                            timeout=aiohttp.ClientTimeout(total=5)) as r:
                    return r.status == 200
            except (TimeoutError, aiohttp.ClientError):
                return False

        states = await asyncio.gather(*(ok(i.url) for i in self.planner.instances))
        down = [i.name for i, up in zip(self.planner.instances, states, strict=True) if not up]
        if down:
            return _error(503, f"instances not healthy: {', '.join(down)}", "server_error")
        return web.json_response({"status": "ok"})

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        text = render_metrics(self.planner, self.stats(), self.fallbacks)
        return web.Response(text=text, content_type="text/plain")

    # -- generation ---------------------------------------------------------------------------

    async def _generate(self, request: web.Request, path: str) -> web.StreamResponse:
        try:
            return await self._generate_checked(request, path)
        except (aiohttp.ClientError, TimeoutError, DualPathError) as exc:
            log.exception("request on %s failed", path)
            return _error(502, f"{type(exc).__name__}: {exc}", "server_error")

    async def _generate_checked(self, request: web.Request, path: str) -> web.StreamResponse:
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            return _error(400, "request body is not valid JSON")
        if not isinstance(body, dict):
            return _error(400, "request body must be a JSON object")
        model = body.get("model", self.served_model)
        if model != self.served_model:
            return _error(404, f"model {model!r} is not served here (serving "
                               f"{self.served_model!r})")
        if body.get("n", 1) != 1:
            return _error(400, "n must be 1")
        body["model"] = self.served_model
        try:
            token_ids = await self._token_ids(path, body)
        except _Upstream as exc:
            return exc.response
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or 0
        if not isinstance(max_tokens, int):
            return _error(400, "max_tokens must be an integer")
        decision = await self.planner.plan(token_ids, max_tokens)
        return await self._dispatch(request, path, body, decision)

    async def _token_ids(self, path: str, body: dict[str, Any]) -> list[int]:
        prompt = body.get("prompt")
        if path == "/v1/completions":
            if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], list | str):
                prompt = prompt[0]
                body["prompt"] = prompt
            if isinstance(prompt, list):
                if not prompt or not all(isinstance(t, int) and not isinstance(t, bool)
                                         and t >= 0 for t in prompt):
                    raise _Upstream(_error(400, "prompt must be a string or a non-empty list "
                                                "of token ids"))
                return [int(t) for t in prompt]
            if not isinstance(prompt, str):
                raise _Upstream(_error(400, "prompt must be a string or a list of token ids"))
            query: dict[str, Any] = {"model": self.served_model, "prompt": prompt,
                                     "add_special_tokens": body.get("add_special_tokens", True)}
        else:
            if not isinstance(body.get("messages"), list):
                raise _Upstream(_error(400, "messages must be a list"))
            query = {"model": self.served_model, "messages": body["messages"]}
            for k in ("add_generation_prompt", "continue_final_message", "chat_template",
                      "chat_template_kwargs", "tools", "add_special_tokens"):
                if k in body:
                    query[k] = body[k]
        p = self.planner.instances[self._prefill_index()]
        async with self.session.post(p.url + "/tokenize", json=query) as resp:
            data = await resp.json(content_type=None)
            if resp.status != 200 or not isinstance(data, dict) or "tokens" not in data:
                raise _Upstream(web.json_response(data, status=resp.status if resp.status != 200
                                                  else 502))
        return [int(t) for t in data["tokens"]]

    async def _dispatch(self, request: web.Request, path: str, body: dict[str, Any],
                        d: Decision) -> web.StreamResponse:
        p_body = dict(body, max_tokens=1, stream=False, min_tokens=0,
                      kv_transfer_params=d.prefill_params.request_params())
        if "max_completion_tokens" in p_body:
            p_body["max_completion_tokens"] = 1
        p_body.pop("stream_options", None)
        d_body = dict(body, kv_transfer_params=d.decode_params.request_params())
        p_task = asyncio.create_task(self._prefill(d, path, p_body))
        try:
            return await self._decode(request, path, body, d_body, d, p_task)
        finally:
            if not p_task.done():
                p_task.cancel()
            self.planner.release_decode(d.assignment)

    async def _prefill(self, d: Decision, path: str, p_body: dict[str, Any]) -> dict[str, Any]:
        """P's answer (its kv_transfer_params report); raises on failure."""
        try:
            async with self.session.post(d.prefill.url + path, json=p_body) as resp:
                data = await resp.json(content_type=None)
                if resp.status != 200:
                    raise RuntimeError(f"{d.prefill.name} answered {resp.status}: "
                                       f"{str(data)[:300]}")
                report = ((data.get("kv_transfer_params") or {}).get("dualpath")) or {}
                return dict(report)
        finally:
            self.planner.release_prefill(d.assignment)

    async def _decode(self, request: web.Request, path: str, body: dict[str, Any],
                      d_body: dict[str, Any], d: Decision,
                      p_task: asyncio.Task[dict[str, Any]]) -> web.StreamResponse:
        stream = bool(body.get("stream"))
        opened = await self._open_decode(d, path, d_body, stream, p_task)
        if opened is None:  # P failed before D produced anything: D computes it alone
            self.fallbacks += 1
            log.warning("request %s: prefill on %s failed (%s); %s recomputes the prompt",
                        d.key, d.prefill.name, p_task.exception(), d.decode.name)
            opened = await self._open_decode(d, path, dict(body), stream, None)
            assert opened is not None
        resp, first = opened
        try:
            if resp.status != 200 or not stream:
                data = await resp.read()
                if resp.status == 200:
                    data = await self._patch_json(data, d, p_task)
                return web.Response(body=data, status=resp.status,
                                    content_type="application/json")
            out = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream",
                                                          "Cache-Control": "no-cache"})
            await out.prepare(request)
            line = first
            try:
                while line:
                    if line.startswith(b"data: {") and b'"usage"' in line:
                        line = await self._patch_sse(line, d, p_task)
                    await out.write(line)
                    line = await resp.content.readline()
                await out.write_eof()
            except (ConnectionResetError, aiohttp.ClientConnectionResetError):
                log.info("request %s: the client went away", d.key)  # D's request is closed
            return out
        finally:
            resp.release()

    async def _open_decode(self, d: Decision, path: str, d_body: dict[str, Any], stream: bool,
                           p_task: asyncio.Task[dict[str, Any]] | None
                           ) -> tuple[aiohttp.ClientResponse, bytes] | None:
        """D's response and its first stream line; None if P failed first (D cancelled)."""

        async def open_() -> tuple[aiohttp.ClientResponse, bytes]:
            resp = await self.session.post(d.decode.url + path, json=d_body)
            try:
                first = await resp.content.readline() if stream and resp.status == 200 else b""
            except BaseException:
                resp.close()
                raise
            return resp, first

        d_task = asyncio.ensure_future(open_())
        while p_task is not None and not p_task.done():
            await asyncio.wait({d_task, p_task}, return_when=asyncio.FIRST_COMPLETED)
            if d_task.done():
                break
        if p_task is not None and not d_task.done() and p_task.exception() is not None:
            d_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
                await d_task
            return None
        return await d_task

    async def _report(self, d: Decision, p_task: asyncio.Task[dict[str, Any]]) -> dict[str, Any]:
        try:
            report = await asyncio.wait_for(asyncio.shield(p_task), timeout=60)
        except Exception:  # P failed or is late: nothing came from the store via P's books
            report = {"hit_tokens": 0, "relay_failed": True}
        return {"key": d.key, "read_side": d.read_side, "prefill": d.prefill.name,
                "decode": d.decode.name, "hit_tokens": int(report.get("hit_tokens", 0)),
                "relay_failed": bool(report.get("relay_failed", False))}

    async def _patch(self, obj: dict[str, Any], d: Decision,
                     p_task: asyncio.Task[dict[str, Any]]) -> dict[str, Any]:
        report = await self._report(d, p_task)
        usage = obj.get("usage")
        if isinstance(usage, dict):
            details = usage.get("prompt_tokens_details") or {}
            details["cached_tokens"] = report["hit_tokens"]
            usage["prompt_tokens_details"] = details
        obj["kv_transfer_params"] = {"dualpath": report}
        return obj

    async def _patch_json(self, data: bytes, d: Decision,
                          p_task: asyncio.Task[dict[str, Any]]) -> bytes:
        try:
            obj = json.loads(data)
        except ValueError:
            return data
        return json.dumps(await self._patch(obj, d, p_task)).encode()

    async def _patch_sse(self, line: bytes, d: Decision,
                         p_task: asyncio.Task[dict[str, Any]]) -> bytes:
        try:
            obj = json.loads(line[6:])
        except ValueError:
            return line
        if not obj.get("usage"):
            return line
        return b"data: " + json.dumps(await self._patch(obj, d, p_task)).encode() + b"\n"

    def _prefill_index(self) -> int:
        ps = [i for i, x in enumerate(self.planner.instances) if x.role == "prefill"]
        self._rr += 1
        return ps[self._rr % len(ps)]

    def _decode_index(self) -> int:
        return next(i for i, x in enumerate(self.planner.instances) if x.role == "decode")


class _Upstream(Exception):
    """An error answer to hand back to the client as is."""

    def __init__(self, response: web.Response) -> None:
        super().__init__("upstream error")
        self.response = response
