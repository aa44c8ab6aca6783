"""OpenAI response objects and SSE framing, as plain dicts serialized with `json_bytes.dumps`.

Kept free of pydantic on purpose: building a dict and `orjson.dumps` is the cheapest path,
and the shapes are fixed by the OpenAI API reference (plus vLLM's `token_ids` extension).
A response has one choice per sample (`n`), each with its `index`; `usage` counts the prompt
once and the completion tokens of every choice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dualpath.server.generation import Outcome
from dualpath.server.json_bytes import dumps
from dualpath.server.tool_parser import ToolCall

SSE_DONE = b"data: [DONE]\n\n"
__all__ = ["SSE_DONE", "ChunkWriter", "chat_choice", "completion_choice", "dumps", "envelope",
           "sse", "usage"]


def sse(obj: Any) -> bytes:
    return b"data: " + dumps(obj) + b"\n\n"


def usage(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    """The prompt once (every choice has the same one), the completions of all choices;
    cached_tokens is the best any choice got (later samples of a prompt find more of it)."""
    prompt = outcomes[0].prompt_tokens if outcomes else 0
    completion = sum(o.completion_tokens for o in outcomes)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": max((o.cached_tokens for o in outcomes),
                                                       default=0)},
    }


def envelope(rid: str, created: int, model: str, chat: bool, choices: list[dict[str, Any]],
             outcomes: Sequence[Outcome]) -> dict[str, Any]:
    return {"id": rid, "object": "chat.completion" if chat else "text_completion",
            "created": created, "model": model, "choices": choices, "usage": usage(outcomes)}


def completion_choice(index: int, text: str, finish_reason: str, logprobs: dict[str, Any] | None,
                      token_ids: list[int] | None,
                      prompt_token_ids: Sequence[int] | None) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": index, "text": text, "logprobs": logprobs,
                              "finish_reason": finish_reason}
    if token_ids is not None:
        choice["token_ids"] = token_ids
        choice["prompt_token_ids"] = list(prompt_token_ids or ())
    return choice


def chat_choice(index: int, content: str | None, tool_calls: Sequence[ToolCall],
                finish_reason: str, logprobs: dict[str, Any] | None,
                token_ids: list[int] | None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = [c.to_openai() for c in tool_calls]
    choice: dict[str, Any] = {"index": index, "message": message, "logprobs": logprobs,
                              "finish_reason": finish_reason}
    if token_ids is not None:
        choice["token_ids"] = token_ids
    return choice


class ChunkWriter:
    """Builds the SSE chunks of one streamed completion or chat completion (all choices)."""

    def __init__(self, *, chat: bool, rid: str, created: int, model: str,
                 include_usage: bool) -> None:
        self.chat = chat
        self._head = {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion",
                      "created": created, "model": model}
        self._include_usage = include_usage

    def _chunk(self, choice: dict[str, Any]) -> bytes:
        obj: dict[str, Any] = {**self._head, "choices": [choice]}
        if self._include_usage:
            obj["usage"] = None
        return sse(obj)

    def opener(self, index: int) -> bytes | None:
        """Chat streams open each choice with the assistant role; completions need none."""
        if not self.chat:
            return None
        return self._chunk({"index": index, "delta": {"role": "assistant", "content": ""},
                            "logprobs": None, "finish_reason": None})

    def content(self, index: int, text: str, logprobs: dict[str, Any] | None = None,
                token_ids: list[int] | None = None) -> bytes:
        if self.chat:
            choice: dict[str, Any] = {"index": index, "delta": {"content": text},
                                      "logprobs": logprobs, "finish_reason": None}
        else:
            choice = {"index": index, "text": text, "logprobs": logprobs, "finish_reason": None}
        if token_ids is not None:
            choice["token_ids"] = token_ids
        return self._chunk(choice)

    def tool_call(self, index: int, call_index: int, call: ToolCall,
                  logprobs: dict[str, Any] | None = None,
                  token_ids: list[int] | None = None) -> bytes:
        """A whole tool call in one delta (id, name and the complete arguments)."""
        delta = {"tool_calls": [{"index": call_index, **call.to_openai()}]}
        choice: dict[str, Any] = {"index": index, "delta": delta, "logprobs": logprobs,
                                  "finish_reason": None}
        if token_ids is not None:
            choice["token_ids"] = token_ids
        return self._chunk(choice)

    def finish(self, index: int, finish_reason: str, with_token_ids: bool) -> bytes:
        if self.chat:
            choice: dict[str, Any] = {"index": index, "delta": {}, "logprobs": None,
                                      "finish_reason": finish_reason}
        else:
            choice = {"index": index, "text": "", "logprobs": None,
                      "finish_reason": finish_reason}
        if with_token_ids:
            choice["token_ids"] = []
        return self._chunk(choice)

    def usage(self, outcomes: Sequence[Outcome]) -> bytes:
        """The usage chunk (empty choices) when it was asked for; else nothing."""
        if not self._include_usage:
            return b""
        return sse({**self._head, "choices": [], "usage": usage(outcomes)})
