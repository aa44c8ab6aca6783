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
and always gives its admission slots back.

`n` > 1 runs n independent generations (the i-th with seed + i when a seed is given), each a
normal backend request, and takes n admission slots at once (so n is at most --max-running);
their choices are merged into one response (`choices.py`).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from dualpath.core.errors import InvalidFieldError
from dualpath.core.requests import SEED_MAX, SEED_MIN, GenerateRequest, SamplingParams
from dualpath.server import responses
from dualpath.server.admission import Admission, Draining, QueueFull
from dualpath.server.api_errors import APIError
from dualpath.server.backend import Backend
from dualpath.server.chat_prompt import (
    chat_messages,
    template_renders_tools,
    text_size,
    tool_dicts,
    tools_in_prompt,
)
from dualpath.server.choices import ChoiceOptions, collect, merge, stream_chunks
from dualpath.server.generation import Generation
from dualpath.server.guided import request_grammar
from dualpath.server.logprobs import LogprobFormatter
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
        self.formatter = LogprobFormatter(self.tokenizer)
        self._ids = itertools.count()
        self._id_prefix = os.urandom(4).hex()

    # ---- endpoints -------------------------------------------------------------------

    async def completions(self, body: CompletionRequest, request: Request) -> Response:
        arrival_s = time.perf_counter()
        self._check_common(body)
        prompt_ids = self._completion_prompt(body.prompt)
        opts = ChoiceOptions(chat=False, logprobs=body.logprobs, parse_tools=False,
                             return_token_ids=body.return_token_ids,
                             prompt_token_ids=tuple(prompt_ids))
        return await self._serve(body, request, prompt_ids, body.max_tokens, "prompt", opts,
                                 None, arrival_s)

    async def chat(self, body: ChatCompletionRequest, request: Request) -> Response:
        arrival_s = time.perf_counter()
        self._check_common(body)
        if body.top_logprobs and not body.logprobs:
            raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
        prompt_ids = self.chat_prompt(body)
        grammar = request_grammar(body.response_format, body.tools, body.tool_choice,
                                  body.parallel_tool_calls)
        opts = ChoiceOptions(chat=True,
                             logprobs=(body.top_logprobs or 0) if body.logprobs else None,
                             parse_tools=bool(tools_in_prompt(body)),
                             return_token_ids=body.return_token_ids,
                             prompt_token_ids=tuple(prompt_ids))
        max_tokens = body.max_completion_tokens or body.max_tokens
        return await self._serve(body, request, prompt_ids, max_tokens, "messages", opts,
                                 grammar, arrival_s)

    def chat_prompt(self, body: ChatCompletionRequest) -> list[int]:
        """The prompt token ids of a chat request (also what /tokenize counts)."""
        native = template_renders_tools(getattr(self.tokenizer, "chat_template", None))
        messages = chat_messages(body, native)
        tools = tools_in_prompt(body)
        self.check_text_size(text_size(messages) + sum(
            len(t.model_dump_json()) for t in tools), "messages")
        try:
            kwargs = {"tools": tool_dicts(tools)} if native and tools else {}
            rendered = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=body.add_generation_prompt, **kwargs)
            return (self.tokenizer.encode(rendered) if isinstance(rendered, str)
                    else list(rendered))
        except Exception as exc:  # template errors are about the messages the client sent
            raise APIError(400, f"messages could not be rendered: {exc}", param="messages") from exc

    # ---- validation ------------------------------------------------------------------

    def _check_common(self, body: _SamplingFields) -> None:
        if body.model is not None and body.model != self.model_name:
            raise APIError(404, f"The model `{body.model}` does not exist.", param="model",
                           code="model_not_found")
        refused = unsupported_field(body)
        if refused is not None:
            raise APIError(400, refused[1], param=refused[0])
        if body.n > self.admission.max_running:
            raise APIError(400, f"n is at most {self.admission.max_running} here (the "
                           f"server's --max-running), got {body.n}", param="n")

    def check_text_size(self, chars: int, param: str) -> None:
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
            self.check_text_size(len(prompt), "prompt")
            # A checkpoint that wants BOS on text prompts says so through `encode_prompt`
            # (dualpath.model.tokenizer); token-id prompts are taken as they are.
            encode = getattr(self.tokenizer, "encode_prompt", self.tokenizer.encode)
            try:
                return list(encode(prompt))
            except (UnicodeError, ValueError) as exc:
                raise APIError(400, f"prompt could not be tokenized: {exc}", param="prompt") from exc
        return list(prompt)  # type: ignore[arg-type]

    def _sampling(self, body: _SamplingFields, prompt_ids: Sequence[int], max_tokens: int | None,
                  param: str, opts: ChoiceOptions,
                  grammar: str | None) -> tuple[SamplingParams, list[str]]:
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
                top_k=max(body.top_k or 0, 0),
                min_p=body.min_p or 0.0,
                repetition_penalty=(1.0 if body.repetition_penalty is None
                                    else body.repetition_penalty),
                presence_penalty=body.presence_penalty or 0.0,
                frequency_penalty=body.frequency_penalty or 0.0,
                logit_bias=_logit_bias(body.logit_bias, vocab),
                logprobs=opts.logprobs,
                grammar=grammar,
            )
        except InvalidFieldError as exc:
            raise APIError(400, str(exc), param=exc.field) from exc
        return sampling, stop

    # ---- generation ------------------------------------------------------------------

    async def _serve(self, body: _SamplingFields, request: Request, prompt_ids: list[int],
                     max_tokens: int | None, param: str, opts: ChoiceOptions,
                     grammar: str | None, arrival_s: float) -> Response:
        sampling, stop = self._sampling(body, prompt_ids, max_tokens, param, opts, grammar)
        n = body.n
        rid = f"{'chatcmpl' if opts.chat else 'cmpl'}-{self._id_prefix}{next(self._ids):x}"
        task = asyncio.current_task()
        assert task is not None  # always inside a task under an ASGI server
        # Until the response starts, a client that goes away cancels this task (also while
        # it waits in the admission queue); a stream is then watched by Starlette.
        watcher = asyncio.create_task(_cancel_on_disconnect(request.receive, task))
        try:
            await self._admit(arrival_s, n)
            handed_off = False  # True once a stream response owns the slots
            try:
                gens = [Generation(self.backend, GenerateRequest(
                    rid if n == 1 else f"{rid}-{i}", tuple(prompt_ids),
                    _nth_sample(sampling, i), arrival_s), stop, self.metrics, arrival_s)
                    for i in range(n)]
                created = int(time.time())
                if not body.stream:
                    return await self._collect(gens, rid, created, opts)
                watcher.cancel()
                if watcher.done() and not watcher.cancelled():
                    # The client left just as we were admitted; no response object will
                    # ever run to release the slots, so the `finally` below does.
                    task.uncancel()
                    return Response(status_code=499)
                include_usage = bool(body.stream_options and body.stream_options.include_usage)
                writer = responses.ChunkWriter(chat=opts.chat, rid=rid, created=created,
                                               model=self.model_name, include_usage=include_usage)
                stream = _ReleasingStream(_sse_body(gens, opts, writer, self.formatter),
                                          self.admission, n)
                handed_off = True
                return stream
            finally:
                if not handed_off:
                    self.admission.release(n)
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

    async def _admit(self, arrival_s: float, n: int) -> None:
        try:
            await self.admission.acquire(n)
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

    async def _collect(self, gens: list[Generation], rid: str, created: int,
                       opts: ChoiceOptions) -> Response:
        if len(gens) == 1:
            results = [await collect(gens[0], 0, opts, self.formatter)]
        else:
            tasks = [asyncio.create_task(collect(g, i, opts, self.formatter))
                     for i, g in enumerate(gens)]
            try:
                results = list(await asyncio.gather(*tasks))
            finally:  # one failed choice (or the client leaving) ends the others
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        obj = responses.envelope(rid, created, self.model_name, opts.chat,
                                 [c for c, _ in results], [o for _, o in results])
        return Response(responses.dumps(obj), media_type=_JSON)

    def _retry_after(self) -> dict[str, str]:
        return {"Retry-After": str(self.backend.admission.retry_after_s)}


def _nth_sample(sampling: SamplingParams, i: int) -> SamplingParams:
    """The i-th of n samples: its own seed (seed + i, wrapped), so seeded samples differ."""
    if i == 0 or sampling.seed is None:
        return sampling
    span = SEED_MAX - SEED_MIN + 1
    return replace(sampling, seed=(sampling.seed + i - SEED_MIN) % span + SEED_MIN)


def _logit_bias(bias: dict[str, float] | None, vocab: int) -> tuple[tuple[int, float], ...]:
    out = []
    for key, value in (bias or {}).items():
        if not key.isdigit() or int(key) >= vocab:
            raise APIError(400, f"logit_bias keys are token ids in [0, {vocab}), got {key!r}",
                           param="logit_bias")
        out.append((int(key), value))
    return tuple(out)


async def _cancel_on_disconnect(receive: Receive, task: asyncio.Task[Any]) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            task.cancel()
            return


async def _sse_body(gens: list[Generation], opts: ChoiceOptions, writer: responses.ChunkWriter,
                    formatter: LogprobFormatter) -> AsyncIterator[bytes]:
    """The SSE chunks of one stream (every choice). Once the response has started, any failure
    (backend, detokenizer, serialization) is reported in-band, then `[DONE]`: the stream ends
    cleanly and nothing escapes to the HTTP layer. (A client that goes away raises
    CancelledError or GeneratorExit, which are not caught.)"""
    try:
        async for chunk in merge([stream_chunks(g, i, opts, writer, formatter)
                                  for i, g in enumerate(gens)]):
            yield chunk
        outcomes = [g.outcome for g in gens if g.outcome is not None]
        yield writer.usage(outcomes) + responses.SSE_DONE
    except APIError as exc:
        yield responses.sse(exc.body())
        yield responses.SSE_DONE
    except Exception as exc:  # a failure mid-stream: tell the client in-band
        logger.warning("stream failed: %s: %s", type(exc).__name__, exc)
        yield responses.sse(APIError(500, f"generation failed: {type(exc).__name__}: {exc}").body())
        yield responses.SSE_DONE


class _ReleasingStream(StreamingResponse):
    """An SSE response that gives its admission slot back however the stream ends,
    including a client that disconnects before the first chunk."""

    def __init__(self, body: AsyncIterator[bytes], admission: Admission, slots: int) -> None:
        super().__init__(body, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._admission = admission
        self._slots = slots

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            try:
                aclose = getattr(self.body_iterator, "aclose", None)
                if aclose is not None:
                    await aclose()
            finally:
                self._admission.release(self._slots)
