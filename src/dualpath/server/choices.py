"""The choices of one response: each a `Generation`, read whole (`collect`) or as SSE chunks
(`stream_chunks`), with its tool calls parsed and its logprobs shaped; `merge` interleaves the
chunks of `n` concurrent choices into one stream.

finish_reason is "tool_calls" when a chat answer that the request allowed to call tools
ended with at least one parsed call (and did not run out of tokens).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from dualpath.server.api_errors import APIError
from dualpath.server.generation import Generation, Outcome
from dualpath.server.logprobs import LogprobFormatter
from dualpath.server.responses import ChunkWriter, chat_choice, completion_choice
from dualpath.server.tool_parser import StreamingToolParser, ToolCall, extract_tool_calls


@dataclass(frozen=True)
class ChoiceOptions:
    chat: bool
    logprobs: int | None  # None: not asked; k: the top k alternatives too
    parse_tools: bool  # chat with tools shown to the model
    return_token_ids: bool
    prompt_token_ids: tuple[int, ...]


def finish_reason(outcome: Outcome, calls: int) -> str:
    # "abort" only reaches a client whose request was cut short by the server (drain timeout).
    if calls and outcome.finish_reason == "stop":
        return "tool_calls"
    return outcome.finish_reason


def _failed(outcome: Outcome | None) -> APIError | None:
    if outcome is None or outcome.finish_reason == "error":
        error = outcome.error if outcome is not None else None
        return APIError(500, f"generation failed: {error or 'backend error'}")
    return None


async def collect(gen: Generation, index: int, opts: ChoiceOptions,
                  formatter: LogprobFormatter) -> tuple[dict[str, Any], Outcome]:
    """One whole choice (500 APIError when the backend failed it)."""
    texts: list[str] = []
    ids: list[int] = []
    lps: list[Any] = []
    try:
        async for delta in gen.deltas():
            texts.append(delta.text)
            ids.extend(delta.token_ids)
            if delta.logprobs is not None:
                lps.extend(delta.logprobs)
    except Exception as exc:  # the backend failed this request: 500 for it alone
        raise APIError(500, f"generation failed: {type(exc).__name__}: {exc}") from exc
    outcome = gen.outcome
    failed = _failed(outcome)
    if failed is not None:
        raise failed
    assert outcome is not None  # _failed checked it
    text = "".join(texts)
    token_ids = ids if opts.return_token_ids else None
    logprob_ids = ids[:len(lps)]
    if not opts.chat:
        logprobs = (None if opts.logprobs is None
                    else formatter.completion(logprob_ids, lps)[0])
        return completion_choice(index, text, finish_reason(outcome, 0), logprobs, token_ids,
                                 opts.prompt_token_ids), outcome
    content: str | None = text
    calls: list[ToolCall] = []
    if opts.parse_tools:
        content, calls = extract_tool_calls(text)
    logprobs = None if opts.logprobs is None else formatter.chat(logprob_ids, lps)
    return chat_choice(index, content, calls, finish_reason(outcome, len(calls)), logprobs,
                       token_ids), outcome


async def stream_chunks(gen: Generation, index: int, opts: ChoiceOptions, writer: ChunkWriter,
                        formatter: LogprobFormatter) -> AsyncIterator[bytes]:
    """The SSE chunks of one choice, its finish chunk last; raises APIError(500) when the
    backend failed it (the caller reports that in-band)."""
    opener = writer.opener(index)
    if opener is not None:
        yield opener
    parser = StreamingToolParser() if opts.parse_tools else None
    calls = 0
    offset = 0
    async for delta in gen.deltas():
        extra: dict[str, Any] = {}
        if opts.logprobs is not None and delta.logprobs:
            ids = list(delta.token_ids[:len(delta.logprobs)])
            if opts.chat:
                extra["logprobs"] = formatter.chat(ids, delta.logprobs)
            else:
                extra["logprobs"], offset = formatter.completion(ids, delta.logprobs, offset)
        if opts.return_token_ids and delta.token_ids:
            extra["token_ids"] = list(delta.token_ids)
        events: Sequence[str | ToolCall] = (parser.push(delta.text) if parser is not None
                                            else [delta.text] if delta.text else [])
        for event in events:
            if isinstance(event, ToolCall):
                yield writer.tool_call(index, calls, event, **extra)
                calls += 1
            else:
                yield writer.content(index, event, **extra)
            extra = {}  # logprobs and ids ride on the first chunk of their delta
        if extra:
            yield writer.content(index, "", **extra)
    for event in parser.finish() if parser is not None else ():
        if isinstance(event, ToolCall):
            yield writer.tool_call(index, calls, event)
            calls += 1
        else:
            yield writer.content(index, event)
    failed = _failed(gen.outcome)
    if failed is not None:
        raise failed
    assert gen.outcome is not None
    yield writer.finish(index, finish_reason(gen.outcome, calls), opts.return_token_ids)


async def merge(streams: Sequence[AsyncIterator[bytes]]) -> AsyncIterator[bytes]:
    """Chunks of all `streams` as they come. The first failure is raised once the others are
    cancelled; closing this iterator (client gone) cancels and closes every stream."""
    if len(streams) == 1:
        async for chunk in streams[0]:
            yield chunk
        return
    queue: asyncio.Queue[tuple[int, bytes | BaseException | None]] = asyncio.Queue()

    async def pump(i: int, stream: AsyncIterator[bytes]) -> None:
        try:
            async for chunk in stream:
                await queue.put((i, chunk))
            await queue.put((i, None))
        except Exception as exc:
            await queue.put((i, exc))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        live = len(tasks)
        while live:
            _, item = await queue.get()
            if item is None:
                live -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
