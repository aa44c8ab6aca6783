"""Request bodies of the OpenAI API subset we serve, as pydantic models (they feed /openapi.json).

Field names follow the OpenAI API reference; `min_tokens`, `ignore_eos`, `stop_token_ids` and
`return_token_ids` are vLLM's extensions. Parsing is strict (no `true` for an integer, no
`"16"` for a number) and refuses NaN/Infinity. Every field has an upper bound (the README's
request-field table lists them); bounds that need the model (context length, vocabulary, the
size of a text prompt) live in `serving.py`. Unknown fields are ignored, as OpenAI and vLLM
do, except the ones in `UNSUPPORTED`: options we know and do not implement are refused with
400 naming the field, never silently dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from dualpath.core.requests import MAX_STOP_TOKEN_IDS, MAX_TOKENS_LIMIT, SEED_MAX, SEED_MIN

MAX_STOP_STRINGS = 64
MAX_STOP_CHARS = 16_384  # total over all stop strings: matching cost per token is linear in it
MAX_MESSAGES = 16_384
MAX_CONTENT_PARTS = 1_024
MAX_NAME_CHARS = 256
MAX_MODEL_CHARS = 256
MAX_USER_CHARS = 1_024
MAX_N = 128
_STRICT = ConfigDict(extra="ignore", strict=True, allow_inf_nan=False)

TokenId = Annotated[int, Field(ge=0, le=2**32 - 1)]
Count = Annotated[int, Field(ge=1, le=MAX_TOKENS_LIMIT)]


class StreamOptions(BaseModel):
    model_config = _STRICT
    include_usage: bool = False


class _SamplingFields(BaseModel):
    """Fields shared by /v1/completions and /v1/chat/completions."""

    model_config = _STRICT

    model: str | None = Field(None, max_length=MAX_MODEL_CHARS,
                              description="must name the served model when given")
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=MAX_N, description="only 1 is supported")
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = Field(
        None, description=f"at most {MAX_STOP_STRINGS} strings, {MAX_STOP_CHARS} characters in all")
    seed: int | None = Field(None, ge=SEED_MIN, le=SEED_MAX)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0, description="only 0 is supported")
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0, description="only 0 is supported")
    logprobs: bool | int | None = Field(None, description="not supported (null/false/0 only)")
    top_logprobs: int | None = Field(None, ge=0, le=20, description="not supported (null/0 only)")
    logit_bias: dict[str, float] | None = Field(None, description="not supported (null/{} only)")
    response_format: dict[str, Any] | None = Field(
        None, description='not supported (null or {"type": "text"} only)')
    user: str | None = Field(None, max_length=MAX_USER_CHARS)
    # vLLM extensions
    min_tokens: int = Field(0, ge=0, le=MAX_TOKENS_LIMIT)
    ignore_eos: bool = False
    stop_token_ids: list[TokenId] | None = Field(None, max_length=MAX_STOP_TOKEN_IDS)
    return_token_ids: bool = Field(
        False, description="add `token_ids` (generated ids) to every choice / streamed choice"
    )
    top_k: int | None = Field(None, ge=-1, le=2**31 - 1, description="not supported (-1/0 only)")
    min_p: float | None = Field(None, ge=0.0, le=1.0, description="not supported (0 only)")
    repetition_penalty: float | None = Field(None, gt=0.0, le=1e6,
                                             description="not supported (1 only)")
    use_beam_search: bool = Field(False, description="not supported (false only)")
    prompt_logprobs: int | None = Field(None, description="not supported (null only)")

    @field_validator("stop")
    @classmethod
    def _bounded_stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else list(value or ())
        if len(stops) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings, got {len(stops)}")
        total = sum(len(s) for s in stops)
        if total > MAX_STOP_CHARS:
            raise ValueError(f"stop strings have {total} characters in all; at most "
                             f"{MAX_STOP_CHARS}")
        return value


class CompletionRequest(_SamplingFields):
    """POST /v1/completions. `prompt`: text, token ids, or a one-element list of either."""

    prompt: str | list[int] | list[str] | list[list[int]]
    max_tokens: Count | None = 16
    echo: bool = Field(False, description="not supported (false only)")
    suffix: str | None = Field(None, max_length=MAX_USER_CHARS, description="not supported (null only)")
    best_of: int | None = Field(None, ge=1, le=MAX_N, description="only 1 is supported")


class TextContentPart(BaseModel):
    model_config = _STRICT
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = _STRICT
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | Annotated[list[TextContentPart], Field(max_length=MAX_CONTENT_PARTS)] | None = None
    name: str | None = Field(None, max_length=MAX_NAME_CHARS)
    tool_calls: list[Any] | None = Field(None, description="not supported (null/[] only)")
    function_call: dict[str, Any] | None = Field(None, description="not supported (null only)")

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(_SamplingFields):
    """POST /v1/chat/completions. `max_tokens` None = up to the context length."""

    messages: list[ChatMessage] = Field(..., min_length=1, max_length=MAX_MESSAGES)
    max_tokens: Count | None = None
    max_completion_tokens: Count | None = None
    add_generation_prompt: bool = True
    tools: list[Any] | None = Field(None, description="not supported (null/[] only)")
    tool_choice: str | dict[str, Any] | None = Field(None,
                                                     description='not supported (null/"none" only)')
    functions: list[Any] | None = Field(None, description="not supported (null/[] only)")
    function_call: str | dict[str, Any] | None = Field(
        None, description='not supported (null/"none" only)')
    parallel_tool_calls: bool | None = None  # meaningless without tools; accepted


def _falsy(value: Any) -> bool:
    return not value


def _text_format(value: Any) -> bool:
    return value is None or (isinstance(value, dict) and value.get("type") == "text"
                             and len(value) == 1)


# Options we recognise but do not implement: (field, is this value harmless?, what we accept).
# A request whose value is not harmless gets 400 naming the field. When a feature lands,
# delete its row (and its hostile-input test case).
UNSUPPORTED: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("logprobs", _falsy, "logprobs are not supported"),
    ("top_logprobs", _falsy, "top_logprobs is not supported"),
    ("presence_penalty", _falsy, "presence_penalty is not supported (must be 0)"),
    ("frequency_penalty", _falsy, "frequency_penalty is not supported (must be 0)"),
    ("logit_bias", _falsy, "logit_bias is not supported"),
    ("response_format", _text_format, 'response_format is not supported (only {"type": "text"})'),
    ("top_k", lambda v: v in (None, -1, 0), "top_k is not supported (must be -1 or 0)"),
    ("min_p", _falsy, "min_p is not supported (must be 0)"),
    ("repetition_penalty", lambda v: v in (None, 1.0), "repetition_penalty is not supported (must be 1)"),
    ("use_beam_search", _falsy, "beam search is not supported"),
    ("prompt_logprobs", lambda v: v is None, "prompt_logprobs is not supported"),
    ("tools", _falsy, "tools are not supported"),
    ("tool_choice", lambda v: v in (None, "none"), "tool_choice is not supported"),
    ("functions", _falsy, "functions are not supported"),
    ("function_call", lambda v: v in (None, "none"), "function_call is not supported"),
)


def unsupported_field(body: BaseModel) -> tuple[str, str] | None:
    """(field, message) of the first option in `body` that we refuse, or None."""
    fields = type(body).model_fields
    for name, harmless, message in UNSUPPORTED:
        if name in fields and not harmless(getattr(body, name)):
            return name, message
    if isinstance(body, ChatCompletionRequest):
        for i, m in enumerate(body.messages):
            if m.tool_calls:
                return f"messages.{i}.tool_calls", "tool calls in messages are not supported"
            if m.function_call is not None:
                return f"messages.{i}.function_call", "function calls in messages are not supported"
    return None
