"""A chat request's prompt: messages (with tool calls and tool results) and tools, through the
model's chat template.

A template that renders tools itself (its text uses `tools`) gets them and the messages as
OpenAI sent them. Most small models' templates do not (SmolLM2's is plain ChatML), so for
them the conversation is rewritten the way Hermes-style tool templates (NousResearch Hermes,
Qwen2.5, vLLM's `tool_chat_template_hermes.jinja`) render it, before the model's own template
runs:

- the tools go into the system message, as JSON inside `<tools></tools>`, with the
  instruction to answer with `<tool_call>{"name": ..., "arguments": ...}</tool_call>`;
- an assistant message's `tool_calls` become such blocks after its content;
- `tool` messages become a user turn of `<tool_response>...</tool_response>` blocks
  (consecutive ones share a turn).

`tool_choice: "none"` leaves the tools out of the prompt (the model is not to call any).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from dualpath.server.protocol import ChatCompletionRequest, ChatMessage, Tool
from dualpath.server.tool_parser import END, START

TOOLS_PREAMBLE = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n")
TOOLS_POSTAMBLE = (
    "\n</tools>\n\nFor each function call, return a json object with function name and "
    "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>')


def template_renders_tools(template: str | None) -> bool:
    return template is not None and "tools" in template


def tools_in_prompt(body: ChatCompletionRequest) -> list[Tool]:
    """The tools the model is shown (none with tool_choice "none")."""
    return [] if body.tool_choice == "none" else list(body.tools or ())


def chat_messages(body: ChatCompletionRequest, native_tools: bool) -> list[dict[str, Any]]:
    """The messages to hand the template (see the module doc)."""
    tools = tools_in_prompt(body)
    if native_tools:
        return [_openai_dict(m) for m in body.messages]
    out: list[dict[str, Any]] = []
    for m in body.messages:
        if m.role == "tool":
            block = f"<tool_response>\n{m.text()}\n</tool_response>"
            if out and out[-1].get("_tool_turn"):
                out[-1]["content"] += "\n" + block
            else:
                out.append({"role": "user", "content": block, "_tool_turn": True})
            continue
        content = m.text()
        if m.role == "assistant" and m.tool_calls:
            blocks = [_call_block(c.function.name, c.function.arguments) for c in m.tool_calls]
            content = "\n".join(([content] if content else []) + blocks)
        out.append({"role": m.role, "content": content})
    for rendered in out:
        rendered.pop("_tool_turn", None)
    if tools:
        system = TOOLS_PREAMBLE + "\n".join(
            json.dumps(t.model_dump(exclude_none=True), ensure_ascii=False) for t in tools
        ) + TOOLS_POSTAMBLE
        if out and out[0]["role"] in ("system", "developer"):
            out[0] = {**out[0], "content": out[0]["content"] + "\n\n" + system}
        else:
            out.insert(0, {"role": "system", "content": system})
    return out


def tool_dicts(tools: Sequence[Tool]) -> list[dict[str, Any]]:
    return [t.model_dump(exclude_none=True) for t in tools]


def text_size(messages: Sequence[dict[str, Any]]) -> int:
    return sum(len(m.get("content") or "") for m in messages)


def _call_block(name: str, arguments: str) -> str:
    try:
        args: Any = json.loads(arguments)
    except ValueError:
        args = arguments  # shown as the model (or client) wrote it
    return f"{START}\n{json.dumps({'name': name, 'arguments': args}, ensure_ascii=False)}\n{END}"


def _openai_dict(m: ChatMessage) -> dict[str, Any]:
    d: dict[str, Any] = {"role": m.role, "content": m.text()}
    if m.name is not None:
        d["name"] = m.name
    if m.tool_calls:
        d["tool_calls"] = [c.model_dump() for c in m.tool_calls]
    if m.tool_call_id is not None:
        d["tool_call_id"] = m.tool_call_id
    return d
