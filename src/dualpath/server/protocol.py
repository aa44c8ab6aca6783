"""Request bodies of the OpenAI API subset we serve, as pydantic models (they feed /openapi.json).

Field names follow the OpenAI API reference; `min_tokens`, `ignore_eos`, `stop_token_ids`,
`return_token_ids`, `top_k`, `min_p` and `repetition_penalty` are vLLM's extensions. Parsing is strict (no `true` for an integer, no
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

from dualpath.core.requests import (
    LOGIT_BIAS_MAX,
    MAX_LOGIT_BIAS,
    MAX_STOP_TOKEN_IDS,
    MAX_TOKENS_LIMIT,
    MAX_TOP_LOGPROBS,
    REPETITION_PENALTY_MAX,
    SEED_MAX,
    SEED_MIN,
)

MAX_STOP_STRINGS = 64
MAX_STOP_CHARS = 16_384  # total over all stop strings: matching cost per token is linear in it
MAX_MESSAGES = 16_384
MAX_CONTENT_PARTS = 1_024
MAX_NAME_CHARS = 256
MAX_MODEL_CHARS = 256
MAX_USER_CHARS = 1_024
MAX_N = 128
MAX_TOOLS = 128
MAX_TOOL_CALLS = 128  # per assistant message in the history
MAX_DESCRIPTION_CHARS = 16_384
_STRICT = ConfigDict(extra="ignore", strict=True, allow_inf_nan=False)
# Request bodies keep unknown fields (in `model_extra`) so that options we know and refuse are
# found even when they are not fields of ours; every other unknown field is ignored.
_REQUEST = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)

TokenId = Annotated[int, Field(ge=0, le=2**32 - 1)]
Count = Annotated[int, Field(ge=1, le=MAX_TOKENS_LIMIT)]


class StreamOptions(BaseModel):
    model_config = _STRICT
    include_usage: bool = False


class _SamplingFields(BaseModel):
    """Fields shared by /v1/completions and /v1/chat/completions."""

    model_config = _REQUEST

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
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0,
                                           description="penalty for tokens already generated")
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0,
                                            description="penalty per time a token was generated")
    logit_bias: dict[str, Annotated[float, Field(ge=-LOGIT_BIAS_MAX, le=LOGIT_BIAS_MAX)]] | None = (
        Field(None, max_length=MAX_LOGIT_BIAS, description="token id (as a string) -> bias"))
    user: str | None = Field(None, max_length=MAX_USER_CHARS)
    # vLLM extensions
    min_tokens: int = Field(0, ge=0, le=MAX_TOKENS_LIMIT)
    ignore_eos: bool = False
    stop_token_ids: list[TokenId] | None = Field(None, max_length=MAX_STOP_TOKEN_IDS)
    return_token_ids: bool = Field(
        False, description="add `token_ids` (generated ids) to every choice / streamed choice"
    )
    top_k: int | None = Field(None, ge=-1, le=2**31 - 1, description="-1 or 0: off")
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(None, gt=0.0, le=REPETITION_PENALTY_MAX,
                                             description="over prompt and generated tokens")
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
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS,
                                 description="logprobs of each token and of the top N")
    echo: bool = Field(False, description="not supported (false only)")
    suffix: str | None = Field(None, max_length=MAX_USER_CHARS, description="not supported (null only)")
    best_of: int | None = Field(None, ge=1, le=MAX_N, description="only 1 is supported")


class TextContentPart(BaseModel):
    model_config = _STRICT
    type: Literal["text"]
    text: str


FunctionName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")]


class FunctionDefinition(BaseModel):
    model_config = _STRICT
    name: FunctionName
    description: str | None = Field(None, max_length=MAX_DESCRIPTION_CHARS)
    parameters: dict[str, Any] | None = Field(None, description="a JSON schema of the arguments")
    strict: bool | None = None  # calls are always constrained when forced; accepted


class Tool(BaseModel):
    model_config = _STRICT
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(BaseModel):
    model_config = _STRICT
    name: FunctionName


class NamedToolChoice(BaseModel):
    model_config = _STRICT
    type: Literal["function"]
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class ToolCallFunction(BaseModel):
    model_config = _STRICT
    name: str = Field(..., max_length=MAX_NAME_CHARS)
    arguments: str = Field(..., description="JSON text of the arguments object")


class MessageToolCall(BaseModel):
    model_config = _STRICT
    id: str = Field(..., max_length=MAX_NAME_CHARS)
    type: Literal["function"] = "function"
    function: ToolCallFunction


class ChatMessage(BaseModel):
    model_config = _STRICT
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | Annotated[list[TextContentPart], Field(max_length=MAX_CONTENT_PARTS)] | None = None
    name: str | None = Field(None, max_length=MAX_NAME_CHARS)
    tool_calls: list[MessageToolCall] | None = Field(None, max_length=MAX_TOOL_CALLS)
    tool_call_id: str | None = Field(None, max_length=MAX_NAME_CHARS)
    function_call: dict[str, Any] | None = Field(None, description="not supported (null only)")

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, allow_inf_nan=False,
                              populate_by_name=True)
    name: str | None = Field(None, max_length=MAX_NAME_CHARS)
    description: str | None = Field(None, max_length=MAX_DESCRIPTION_CHARS)
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = _STRICT
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class ChatCompletionRequest(_SamplingFields):
    """POST /v1/chat/completions. `max_tokens` None = up to the context length."""

    messages: list[ChatMessage] = Field(..., min_length=1, max_length=MAX_MESSAGES)
    max_tokens: Count | None = None
    max_completion_tokens: Count | None = None
    add_generation_prompt: bool = True
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS,
                                     description="alternatives per token (needs logprobs)")
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = Field(None, max_length=MAX_TOOLS)
    tool_choice: ToolChoice | None = Field(None, description='default "auto" with tools')
    parallel_tool_calls: bool | None = None
    functions: list[Any] | None = Field(None, description="not supported (null/[] only)")
    function_call: str | dict[str, Any] | None = Field(
        None, description='not supported (null/"none" only)')


def _falsy(value: Any) -> bool:
    return not value


def _null(value: Any) -> bool:
    return value is None


# Options we recognise but do not implement: (field, is this value harmless?, what we accept).
# A request whose value is not harmless gets 400 naming the field. When a feature lands,
# delete its row (and its hostile-input test case).
UNSUPPORTED: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("echo", _falsy, "echo is not supported"),
    ("suffix", _null, "suffix is not supported"),
    ("best_of", lambda v: v in (None, 1), "best_of must be 1"),
    ("use_beam_search", _falsy, "beam search is not supported"),
    ("prompt_logprobs", _null, "prompt_logprobs is not supported"),
    ("functions", _falsy, "functions are not supported (use tools)"),
    ("function_call", lambda v: v in (None, "none"), "function_call is not supported (use "
                                                      "tool_choice)"),
    # OpenAI options without an effect here
    ("store", _falsy, "store is not supported"),
    ("metadata", _falsy, "metadata is not supported (it needs store)"),
    ("prediction", _null, "prediction (predicted outputs) is not supported"),
    ("audio", _null, "audio output is not supported"),
    ("modalities", lambda v: v in (None, ["text"]), 'only the "text" modality is supported'),
    ("reasoning_effort", _null, "reasoning_effort is not supported"),
    ("web_search_options", _null, "web search is not supported"),
    ("service_tier", lambda v: v in (None, "auto", "default"), "service_tier is not supported"),
    # vLLM extensions
    ("guided_json", _null, "guided_json is not supported (use response_format)"),
    ("guided_regex", _null, "guided_regex is not supported"),
    ("guided_choice", _null, "guided_choice is not supported"),
    ("guided_grammar", _null, "guided_grammar is not supported"),
    ("guided_decoding_backend", _null, "guided_decoding_backend is not supported"),
    ("structured_outputs", _null, "structured_outputs is not supported (use response_format)"),
    ("length_penalty", lambda v: v in (None, 1, 1.0), "length_penalty is not supported"),
    ("include_stop_str_in_output", _falsy, "include_stop_str_in_output is not supported"),
    ("skip_special_tokens", lambda v: v in (None, True), "skip_special_tokens must be true"),
    ("spaces_between_special_tokens", lambda v: v in (None, True),
     "spaces_between_special_tokens must be true"),
    ("truncate_prompt_tokens", _null, "truncate_prompt_tokens is not supported"),
    ("allowed_token_ids", _null, "allowed_token_ids is not supported (use logit_bias)"),
    ("bad_words", _falsy, "bad_words is not supported (use logit_bias)"),
    ("logits_processors", _falsy, "logits_processors are not supported"),
    ("continue_final_message", _falsy, "continue_final_message is not supported"),
    ("chat_template", _null, "a per-request chat_template is not supported"),
    ("chat_template_kwargs", _falsy, "chat_template_kwargs are not supported"),
    ("documents", _falsy, "documents are not supported"),
    ("return_tokens_as_token_ids", _falsy, "return_tokens_as_token_ids is not supported"),
    ("vllm_xargs", _falsy, "vllm_xargs are not supported"),
)


def unsupported_field(body: BaseModel) -> tuple[str, str] | None:
    """(field, message) of the first option in `body` that we refuse, or None. Options that
    are not fields of our models are looked up in the body's extra (ignored) fields."""
    fields = type(body).model_fields
    extra = body.model_extra or {}
    for name, harmless, message in UNSUPPORTED:
        if name in fields:
            value = getattr(body, name)
        elif name in extra:
            value = extra[name]
        else:
            continue
        if not harmless(value):
            return name, message
    if isinstance(body, ChatCompletionRequest):
        for i, m in enumerate(body.messages):
            if m.function_call is not None:
                return f"messages.{i}.function_call", "function calls in messages are not supported"
    return None
