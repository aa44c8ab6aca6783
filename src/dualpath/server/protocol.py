"""Request bodies of the OpenAI API subset we serve, as pydantic models (they feed /openapi.json).

Field names follow the OpenAI API reference; `min_tokens`, `ignore_eos`, `stop_token_ids` and
`return_token_ids` are vLLM's extensions. Unknown fields are ignored, as OpenAI and vLLM do.
Range checks that need the model (context length, vocabulary) live in `app.py`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

_MAX_STOP = 16  # OpenAI allows 4 stop strings; vLLM allows any number. We allow a few more.


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class _SamplingFields(BaseModel):
    """Fields shared by /v1/completions and /v1/chat/completions."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(None, description="must name the served model when given")
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    n: int = Field(1, description="only 1 is supported")
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = Field(None, max_length=_MAX_STOP)
    seed: int | None = None
    presence_penalty: float | None = Field(None, description="only 0 is supported")
    frequency_penalty: float | None = Field(None, description="only 0 is supported")
    logprobs: bool | int | None = Field(None, description="not supported (null/false/0 only)")
    user: str | None = None
    # vLLM extensions
    min_tokens: int = Field(0, ge=0)
    ignore_eos: bool = False
    stop_token_ids: list[int] | None = Field(None, max_length=256)
    return_token_ids: bool = Field(
        False, description="add `token_ids` (generated ids) to every choice / streamed choice"
    )


class CompletionRequest(_SamplingFields):
    """POST /v1/completions. `prompt`: text, token ids, or a one-element list of either."""

    prompt: str | list[int] | list[str] | list[list[int]]
    max_tokens: int | None = Field(16, ge=1)
    echo: bool = Field(False, description="not supported (false only)")
    suffix: str | None = Field(None, description="not supported (null only)")
    best_of: int | None = Field(None, description="only 1 is supported")


class TextContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextContentPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(_SamplingFields):
    """POST /v1/chat/completions. `max_tokens` None = up to the context length."""

    messages: list[ChatMessage] = Field(..., min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    add_generation_prompt: bool = True
