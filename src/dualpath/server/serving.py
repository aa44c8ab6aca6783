"""Turning a validated OpenAI request into a backend request and an HTTP response.

Order of checks for both endpoints: admission capacity (429 / 503 at once, before the body is
read, when the queue is already full or the server drains), model name (404), unsupported options (400), the size of
the prompt text (400; at most `MAX_CHARS_PER_TOKEN` characters per token of context, so a
client cannot make the event loop tokenize megabytes for a prompt that could never fit),
prompt tokenization and range checks (400, with the numbers for context overflow), sampling
parameters (400), admission (429 queue full / 503 draining), then generation. A non-streamed
request whose client disconnects is cancelled (a watcher task listens for `http.disconnect`);
a streamed one is cancelled by Starlette when the client goes away. Whatever fails inside one
request fails that request alone (500, or an in-band error event once a stream has started)
and always gives its admission slot back.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from dualpath.core.errors import InvalidFieldError
from dualpath.core.requests import GenerateRequest, SamplingParams
from dualpath.server import responses
from dualpath.server.admission import Admission, Draining, QueueFull
from dualpath.server.api_errors import APIError
from dualpath.server.backend import Backend
from dualpath.server.generation import Delta, Generation
from dualpath.server.metrics import ServerMetrics
from dualpath.server.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    _SamplingFields,
    unsupported_field,
)

logger = logging.getLogger(__name__)
_JSON = "application/json"
# Text longer than this many characters per token of context cannot fit whatever the tokenizer
# (real tokenizers average 3-5); refusing it before tokenizing bounds the work per request.
MAX_CHARS_PER_TOKEN = 64


class OpenAIServing:
    """Shared state of the generation endpoints: backend, admission queue, metrics."""

    def __init__(self, backend: Backend, admission: Admission, metrics: ServerMetrics,
                 model_name: str) -> None:
        self.backend = backend
        self.admission = admission
        self.metrics = metrics
        self.model_name = model_name
        self.tokenizer = backend.tokenizer
        self._ids = itertools.count()
        self._id_prefix = os.urandom(4).hex()

    # ---- endpoints -------------------------------------------------------------------

    async def completions(self, body: CompletionRequest, request: Request) -> Response:
        arrival_s = time.perf_counter()
        self._check_common(body)
        if body.echo:
            raise APIError(400, "echo is not supported", param="echo")
        if body.suffix is not None:
            raise APIError(400, "suffix is not supported", param="suffix")
        if body.best_of not in (None, 1):
            raise APIError(400, "best_of must be 1", param="best_of")
        prompt_ids = self._completion_prompt(body.prompt)
        return await self._serve(body, request, prompt_ids, body.max_tokens, "prompt",
                                 chat=False, arrival_s=arrival_s)

    async def chat(self, body: ChatCompletionRequest, request: Request) -> Response:
        arrival_s = time.perf_counter()
        self._check_common(body)
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        self._check_text_size(sum(len(m["content"]) for m in messages), "messages")
        try:
            rendered = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=body.add_generation_prompt)
            prompt_ids = (self.tokenizer.encode(rendered) if isinstance(rendered, str)
                          else list(rendered))
        except Exception as exc:  # template errors are about the messages the client sent
            raise APIError(400, f"messages could not be rendered: {exc}", param="messages") from exc
        max_tokens = body.max_completion_tokens or body.max_tokens
        return await self._serve(body, request, prompt_ids, max_tokens, "messages",
                                 chat=True, arrival_s=arrival_s)

    # ---- validation ------------------------------------------------------------------

    def _check_common(self, body: _SamplingFields) -> None:
        if body.model is not None and body.model != self.model_name:
            raise APIError(404, f"The model `{body.model}` does not exist.", param="model",
                           code="model_not_found")
        if body.n != 1:
            raise APIError(400, f"n must be 1 (got {body.n}); send one request per sample",
                           param="n")
        refused = unsupported_field(body)
        if refused is not None:
            raise APIError(400, refused[1], param=refused[0])

    def _check_text_size(self, chars: int, param: str) -> None:
        limit = MAX_CHARS_PER_TOKEN * self.backend.max_model_len
        if chars > limit:
            raise APIError(
                400, f"the {param} text has {chars} characters; at most {limit} "
                f"({MAX_CHARS_PER_TOKEN} per token of the {self.backend.max_model_len}-token "
                "context) are accepted", param=param, code="context_length_exceeded")

    def _completion_prompt(self, prompt: str | list[int] | list[str] | list[list[int]]) -> list[int]:
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str | list):
            if len(prompt) != 1:
                raise APIError(400, f"batched prompts are not supported (got {len(prompt)}); "
                               "send one prompt per request", param="prompt")
            prompt = prompt[0]
        if isinstance(prompt, str):
            self._check_text_size(len(prompt), "prompt")
            # A checkpoint that wants BOS on text prompts says so through `encode_prompt`
            # (dualpath.model.tokenizer); token-id prompts are taken as they are.
            encode = getattr(self.tokenizer, "encode_prompt", self.tokenizer.encode)
            try:
                return list(encode(prompt))
            except (UnicodeError, ValueError) as exc:
                raise APIError(400, f"prompt could not be tokenized: {exc}", param="prompt") from exc
        return list(prompt)  # type: ignore[arg-type]

    def _sampling(self, body: _SamplingFields, prompt_ids: Sequence[int], max_tokens: int | None,
                  param: str) -> tuple[SamplingParams, list[str]]:
        n_prompt = len(prompt_ids)
        if n_prompt == 0:
            raise APIError(400, "the prompt is empty", param=param)
        vocab = self.tokenizer.vocab_size
        if min(prompt_ids) < 0 or max(prompt_ids) >= vocab:
            raise APIError(400, f"prompt token ids must be in [0, {vocab})", param=param)
        max_len = self.backend.max_model_len
        if max_tokens is None:
            max_tokens = max(max_len - n_prompt, 0)
        if n_prompt + max_tokens > max_len or max_tokens < 1:
            raise APIError(
                400,
                f"This model's maximum context length is {max_len} tokens. However, you "
                f"requested {n_prompt + max(max_tokens, 1)} tokens ({n_prompt} in the {param}, "
                f"{max(max_tokens, 1)} in the completion). Please reduce the length of the "
                f"{param} or completion.",
                param=param, code="context_length_exceeded",
            )
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or ())
        stop_ids = tuple(body.stop_token_ids or ())
        if stop_ids and max(stop_ids) >= vocab:
            raise APIError(400, f"stop_token_ids must be in [0, {vocab})", param="stop_token_ids")
        try:
            sampling = SamplingParams(
                max_tokens=max_tokens,
                temperature=1.0 if body.temperature is None else body.temperature,
                top_p=1.0 if body.top_p is None else body.top_p,
                min_tokens=body.min_tokens,
                ignore_eos=body.ignore_eos,
                seed=body.seed,
                stop_token_ids=stop_ids,
            )
        except InvalidFieldError as exc:
            raise APIError(400, str(exc), param=exc.field) from exc
        return sampling, stop

    # ---- generation ------------------------------------------------------------------

    async def _serve(self, body: _SamplingFields, request: Request, prompt_ids: list[int],
                     max_tokens: int | None, param: str, *, chat: bool,
                     arrival_s: float) -> Response:
        sampling, stop = self._sampling(body, prompt_ids, max_tokens, param)
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{self._id_prefix}{next(self._ids):x}"
        task = asyncio.current_task()
        assert task is not None  # always inside a task under an ASGI server
        # Until the response starts, a client that goes away cancels this task (also while
        # it waits in the admission queue); a stream is then watched by Starlette.
        watcher = asyncio.create_task(_cancel_on_disconnect(request.receive, task))
        try:
            await self._admit(arrival_s)
            handed_off = False  # True once a stream response owns the slot
            try:
                gen = Generation(self.backend,
                                 GenerateRequest(rid, tuple(prompt_ids), sampling, arrival_s),
                                 stop, self.metrics, arrival_s)
                created = int(time.time())
                if not body.stream:
                    return await self._collect(gen, rid, created, chat, body.return_token_ids,
                                               tuple(prompt_ids))
                watcher.cancel()
                if watcher.done() and not watcher.cancelled():
                    # The client left just as we were admitted; no response object will
                    # ever run to release the slot, so the `finally` below does.
                    task.uncancel()
                    return Response(status_code=499)
                include_usage = bool(body.stream_options and body.stream_options.include_usage)
                writer = responses.ChunkWriter(chat=chat, rid=rid, created=created,
                                               model=self.model_name, include_usage=include_usage,
                                               return_token_ids=body.return_token_ids)
                stream = _ReleasingStream(_sse_body(gen, writer), self.admission)
                handed_off = True
                return stream
            finally:
                if not handed_off:
                    self.admission.release()
        except asyncio.CancelledError:
            if watcher.done() and not watcher.cancelled() and task.uncancel() == 0:
                return Response(status_code=499)  # the client is gone; nobody reads this
            raise
        finally:
            watcher.cancel()

    def refuse_if_full(self) -> None:
        """429 / 503 before the body is even read when admission would refuse anyway: under
        overload a refused request costs no parsing or tokenization."""
        try:
            self.admission.check()
        except (QueueFull, Draining) as exc:
            raise self._refusal(exc) from None

    async def _admit(self, arrival_s: float) -> None:
        try:
            await self.admission.acquire()
        except (QueueFull, Draining) as exc:
            raise self._refusal(exc) from None
        self.metrics.queue_s.observe(time.perf_counter() - arrival_s)

    def _refusal(self, exc: Exception) -> APIError:
        if isinstance(exc, QueueFull):
            self.metrics.reject("queue_full")
            return APIError(429, "the server's admission queue is full; retry later",
                            headers=self._retry_after())
        self.metrics.reject("draining")
        return APIError(503, "the server is shutting down", headers=self._retry_after())

    async def _collect(self, gen: Generation, rid: str, created: int, chat: bool,
                       return_ids: bool, prompt_ids: tuple[int, ...]) -> Response:
        texts: list[str] = []
        ids: list[int] = []
        delta: Delta
        try:
            async for delta in gen.deltas():
                texts.append(delta.text)
                ids.extend(delta.token_ids)
        except Exception as exc:  # the backend failed this request: 500 for it alone
            raise APIError(500, f"generation failed: {type(exc).__name__}: {exc}") from exc
        outcome = gen.outcome
        if outcome is None or outcome.finish_reason == "error":
            error = outcome.error if outcome is not None else None
            raise APIError(500, f"generation failed: {error or 'backend error'}")
        text = "".join(texts)
        token_ids = ids if return_ids else None
        obj: dict[str, Any]
        if chat:
            obj = responses.chat_completion(rid, created, self.model_name, text, outcome, token_ids)
        else:
            obj = responses.completion(rid, created, self.model_name, text, outcome, token_ids,
                                       prompt_ids if return_ids else None)
        return Response(responses.dumps(obj), media_type=_JSON)

    def _retry_after(self) -> dict[str, str]:
        return {"Retry-After": str(self.backend.admission.retry_after_s)}


async def _cancel_on_disconnect(receive: Receive, task: asyncio.Task[Any]) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            task.cancel()
            return


async def _sse_body(gen: Generation, writer: responses.ChunkWriter) -> AsyncIterator[bytes]:
    """The SSE chunks of one stream. Once the response has started, any failure (backend,
    detokenizer, serialization) is reported in-band, then `[DONE]`: the stream ends cleanly
    and nothing escapes to the HTTP layer. (A client that goes away raises CancelledError or
    GeneratorExit, which are not caught.)"""
    try:
        first = writer.first()
        if first is not None:
            yield first
        async for delta in gen.deltas():
            chunk = writer.delta(delta.text, delta.token_ids)
            if chunk is not None:
                yield chunk
        outcome = gen.outcome
        if outcome is None or outcome.finish_reason == "error":
            error = outcome.error if outcome is not None else None
            yield responses.sse(APIError(500, f"generation failed: {error or 'backend error'}").body())
            yield responses.SSE_DONE
            return
        yield writer.last(outcome)
    except Exception as exc:  # a failure mid-stream: tell the client in-band
        logger.warning("stream failed: %s: %s", type(exc).__name__, exc)
        yield responses.sse(APIError(500, f"generation failed: {type(exc).__name__}: {exc}").body())
        yield responses.SSE_DONE


class _ReleasingStream(StreamingResponse):
    """An SSE response that gives its admission slot back however the stream ends,
    including a client that disconnects before the first chunk."""

    def __init__(self, body: AsyncIterator[bytes], admission: Admission) -> None:
        super().__init__(body, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._admission = admission

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            try:
                aclose = getattr(self.body_iterator, "aclose", None)
                if aclose is not None:
                    await aclose()
            finally:
                self._admission.release()
