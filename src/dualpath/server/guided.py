"""The grammar a chat or completion request constrains its answer to, if any.

- `response_format: {"type": "json_object"}` -> any JSON object;
  `{"type": "json_schema", "json_schema": {"schema": S}}` -> JSON valid against S.
- `tool_choice: "required"` -> one or more Hermes tool calls (one with
  `parallel_tool_calls: false`) of any of the request's tools, each `{"name": <a tool>,
  "arguments": <an object valid against that tool's parameters>}`; a named function -> one
  call of that function. `"auto"` and `"none"` constrain nothing.

The grammar is llguidance's grammar text (`core.guide`), checked here, so an invalid schema is
a 400 naming the field before anything reaches an engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dualpath.core.errors import GrammarError
from dualpath.core.guide import grammar_from_json_schema, grammar_from_lark, lark_json
from dualpath.server.api_errors import APIError
from dualpath.server.protocol import ResponseFormat, Tool, ToolChoice
from dualpath.server.tool_parser import END, START


def response_format_grammar(fmt: ResponseFormat | None) -> str | None:
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        schema: dict[str, Any] = {"type": "object"}
    else:
        spec = fmt.json_schema
        if spec is None:
            raise APIError(400, 'response_format of type "json_schema" needs `json_schema`',
                           param="response_format.json_schema")
        schema = spec.schema_ if spec.schema_ is not None else {"type": "object"}
    try:
        return grammar_from_json_schema(schema)
    except GrammarError as exc:
        raise APIError(400, f"response_format: {exc}", param="response_format") from exc


def forced_tool(tools: Sequence[Tool] | None, choice: ToolChoice | None) -> str | None:
    """The tool a named tool_choice asks for (400 when it is not among `tools`)."""
    if choice is None or isinstance(choice, str):
        return None
    name = choice.function.name
    if not any(t.function.name == name for t in tools or ()):
        raise APIError(400, f"tool_choice names the function {name!r}, which is not in tools",
                       param="tool_choice")
    return name


def tool_call_grammar(tools: Sequence[Tool], only: str | None, parallel: bool) -> str:
    """Hermes tool calls of `tools` (just `only` when given); several when `parallel`."""
    options = []
    for tool in tools:
        f = tool.function
        if only is not None and f.name != only:
            continue
        params = f.parameters if f.parameters else {"type": "object"}
        options.append({"type": "object",
                        "properties": {"name": {"const": f.name}, "arguments": params},
                        "required": ["name", "arguments"], "additionalProperties": False})
    schema = options[0] if len(options) == 1 else {"anyOf": options}
    call = f'"{_lark_text(START)}\\n" {lark_json(schema)} "\\n{_lark_text(END)}"'
    start = 'call ("\\n" call)*' if parallel and only is None else "call"
    try:
        return grammar_from_lark(f"start: {start}\ncall: {call}\n")
    except GrammarError as exc:
        raise APIError(400, f"tools: the parameters are not a usable JSON schema: {exc}",
                       param="tools") from exc


def request_grammar(response_format: ResponseFormat | None, tools: Sequence[Tool] | None,
                    choice: ToolChoice | None, parallel: bool | None) -> str | None:
    """The request's grammar, or None (free text)."""
    fmt = response_format_grammar(response_format)
    if choice not in (None, "none") and not tools:
        raise APIError(400, "tool_choice other than \"none\" needs tools", param="tool_choice")
    wants_call = bool(tools) and (choice == "required" or not isinstance(choice, str | None))
    if not wants_call:
        return fmt
    if fmt is not None:
        raise APIError(400, "response_format cannot be combined with a tool_choice that forces "
                       "a tool call", param="response_format")
    assert tools  # wants_call
    return tool_call_grammar(tools, forced_tool(tools, choice), parallel is not False)


def _lark_text(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')
