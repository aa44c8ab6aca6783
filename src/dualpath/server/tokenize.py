"""vLLM's utility endpoints: POST /tokenize, POST /detokenize, GET /version.

Shapes as vLLM's (`vllm/entrypoints/openai/protocol.py`):

- /tokenize with `{"prompt": str, "add_special_tokens": true}` (the completion prompt, BOS
  where the checkpoint wants it) or `{"messages": [...], "add_generation_prompt": true,
  "tools": [...]}` (the chat prompt exactly as /v1/chat/completions renders it) ->
  `{"count", "max_model_len", "tokens", "token_strs"}` (`token_strs` with `return_token_strs`).
- /detokenize `{"tokens": [ids]}` -> `{"prompt": text}`.
- /version -> `{"version": "<dualpath version>"}`.

Bounds are those of the generation endpoints (text per token of context, messages, ids in
the vocabulary); /tokenize and /detokenize need the API key when one is set.
"""

from __future__ import annotations

from importlib import metadata
from typing import Annotated, Any

from pydantic import BaseModel, Field

from dualpath.server.api_errors import APIError
from dualpath.server.json_bytes import dumps
from dualpath.server.protocol import (
    _STRICT,
    MAX_MESSAGES,
    MAX_MODEL_CHARS,
    MAX_TOOLS,
    ChatCompletionRequest,
    ChatMessage,
    Tool,
)
from dualpath.server.serving import OpenAIServing

MAX_DETOKENIZE_TOKENS = 1 << 22


class TokenizeCompletionRequest(BaseModel):
    model_config = _STRICT
    model: str | None = Field(None, max_length=MAX_MODEL_CHARS)
    prompt: str
    add_special_tokens: bool = True
    return_token_strs: bool = False


class TokenizeChatRequest(BaseModel):
    model_config = _STRICT
    model: str | None = Field(None, max_length=MAX_MODEL_CHARS)
    messages: list[ChatMessage] = Field(..., min_length=1, max_length=MAX_MESSAGES)
    add_generation_prompt: bool = True
    add_special_tokens: bool = False
    tools: list[Tool] | None = Field(None, max_length=MAX_TOOLS)
    return_token_strs: bool = False


class DetokenizeRequest(BaseModel):
    model_config = _STRICT
    model: str | None = Field(None, max_length=MAX_MODEL_CHARS)
    tokens: Annotated[list[Annotated[int, Field(ge=0, le=2**32 - 1)]],
                      Field(max_length=MAX_DETOKENIZE_TOKENS)]


def version() -> str:
    try:
        return metadata.version("dualpath")
    except metadata.PackageNotFoundError:  # running from a source tree
        return "0.1.0"


def tokenize(serving: OpenAIServing,
             body: TokenizeCompletionRequest | TokenizeChatRequest) -> bytes:
    _check_model(serving, body.model)
    tok = serving.tokenizer
    if isinstance(body, TokenizeChatRequest):
        chat = ChatCompletionRequest.model_construct(
            messages=body.messages, tools=body.tools,
            add_generation_prompt=body.add_generation_prompt)
        ids = serving.chat_prompt(chat)
    else:
        serving.check_text_size(len(body.prompt), "prompt")
        encode = getattr(tok, "encode_prompt", tok.encode) if body.add_special_tokens \
            else tok.encode
        try:
            ids = list(encode(body.prompt))
        except (UnicodeError, ValueError) as exc:
            raise APIError(400, f"prompt could not be tokenized: {exc}", param="prompt") from exc
    out: dict[str, Any] = {"count": len(ids), "max_model_len": serving.backend.max_model_len,
                           "tokens": ids, "token_strs": None}
    if body.return_token_strs:
        out["token_strs"] = [serving.formatter.text(i) for i in ids]
    return dumps(out)


def detokenize(serving: OpenAIServing, body: DetokenizeRequest) -> bytes:
    _check_model(serving, body.model)
    vocab = serving.tokenizer.vocab_size
    if body.tokens and max(body.tokens) >= vocab:
        raise APIError(400, f"tokens must be in [0, {vocab})", param="tokens")
    return dumps({"prompt": serving.tokenizer.decode(body.tokens)})


def _check_model(serving: OpenAIServing, model: str | None) -> None:
    if model is not None and model != serving.model_name:
        raise APIError(404, f"The model `{model}` does not exist.", param="model",
                       code="model_not_found")
