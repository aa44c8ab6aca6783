"""OpenAI response objects and SSE framing, as plain dicts serialized with `json_bytes.dumps`.

Kept free of pydantic on purpose: building a dict and `orjson.dumps` is the cheapest path,
and the shapes are fixed by the OpenAI API reference (plus vLLM's `token_ids` extension).
"""

from __future__ import annotations

from typing import Any

from dualpath.server.generation import Outcome
from dualpath.server.json_bytes import dumps

SSE_DONE = b"data: [DONE]\n\n"
__all__ = ["SSE_DONE", "ChunkWriter", "chat_completion", "completion", "dumps", "sse", "usage"]


def sse(obj: Any) -> bytes:
    return b"data: " + dumps(obj) + b"\n\n"


def usage(outcome: Outcome) -> dict[str, Any]:
    return {
        "prompt_tokens": outcome.prompt_tokens,
        "completion_tokens": outcome.completion_tokens,
        "total_tokens": outcome.prompt_tokens + outcome.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": outcome.cached_tokens},
    }


def finish_reason(outcome: Outcome) -> str:
    # "abort" only reaches a client whose request was cut short by the server (drain timeout).
    return outcome.finish_reason


def completion(rid: str, created: int, model: str, text: str, outcome: Outcome,
               token_ids: list[int] | None, prompt_token_ids: tuple[int, ...] | None) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "text": text, "logprobs": None,
                              "finish_reason": finish_reason(outcome)}
    if token_ids is not None:
        choice["token_ids"] = token_ids
        choice["prompt_token_ids"] = prompt_token_ids
    return {"id": rid, "object": "text_completion", "created": created, "model": model,
            "choices": [choice], "usage": usage(outcome)}


def chat_completion(rid: str, created: int, model: str, text: str, outcome: Outcome,
                    token_ids: list[int] | None) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text},
                              "logprobs": None, "finish_reason": finish_reason(outcome)}
    if token_ids is not None:
        choice["token_ids"] = token_ids
    return {"id": rid, "object": "chat.completion", "created": created, "model": model,
            "choices": [choice], "usage": usage(outcome)}


class ChunkWriter:
    """Builds the SSE chunks of one streamed completion or chat completion."""

    def __init__(self, *, chat: bool, rid: str, created: int, model: str,
                 include_usage: bool, return_token_ids: bool) -> None:
        self._chat = chat
        self._head = {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion",
                      "created": created, "model": model}
        self._include_usage = include_usage
        self._return_token_ids = return_token_ids

    def _chunk(self, choice: dict[str, Any]) -> bytes:
        obj: dict[str, Any] = {**self._head, "choices": [choice]}
        if self._include_usage:
            obj["usage"] = None
        return sse(obj)

    def first(self) -> bytes | None:
        """Chat streams open with the assistant role; completion streams need no opener."""
        if not self._chat:
            return None
        return self._chunk({"index": 0, "delta": {"role": "assistant", "content": ""},
                            "logprobs": None, "finish_reason": None})

    def delta(self, text: str, token_ids: tuple[int, ...]) -> bytes | None:
        if not text and not (self._return_token_ids and token_ids):
            return None
        if self._chat:
            choice: dict[str, Any] = {"index": 0, "delta": {"content": text},
                                      "logprobs": None, "finish_reason": None}
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": None}
        if self._return_token_ids:
            choice["token_ids"] = list(token_ids)
        return self._chunk(choice)

    def last(self, outcome: Outcome) -> bytes:
        """The finish_reason chunk, then the usage chunk when asked for, then [DONE]."""
        if self._chat:
            choice: dict[str, Any] = {"index": 0, "delta": {}, "logprobs": None,
                                      "finish_reason": finish_reason(outcome)}
        else:
            choice = {"index": 0, "text": "", "logprobs": None,
                      "finish_reason": finish_reason(outcome)}
        if self._return_token_ids:
            choice["token_ids"] = []
        out = self._chunk(choice)
        if self._include_usage:
            out += sse({**self._head, "choices": [], "usage": usage(outcome)})
        return out + SSE_DONE
