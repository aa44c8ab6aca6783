"""Tool calls in generated text, in the Hermes format (as vLLM's `hermes` parser reads it):

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

`extract_tool_calls` splits a finished answer into its content and its calls; a block that is
not a JSON object with a string `name` leaves the whole answer as content (nothing is half
parsed). `StreamingToolParser` does the same on a stream: content is passed on as it comes
(holding back what may be the start of `<tool_call>`), a call is emitted once its closing tag
arrives, and an unfinished call at the end goes out as the content it was.

`arguments` is always a JSON string (OpenAI's shape), the object the model wrote re-encoded.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass

START, END = "<tool_call>", "</tool_call>"
_BLOCK = re.compile(re.escape(START) + r"(.*?)" + re.escape(END), re.DOTALL)


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text of an object

    def to_openai(self) -> dict[str, object]:
        return {"id": self.id, "type": "function",
                "function": {"name": self.name, "arguments": self.arguments}}


def new_call_id() -> str:
    return "call_" + os.urandom(12).hex()


def parse_call(body: str) -> ToolCall | None:
    """The call in one block's body, or None when it is not `{"name": str, "arguments": {}}`."""
    try:
        obj = json.loads(body)
    except ValueError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):  # some models write the arguments as a JSON string already
        try:
            args = json.loads(args)
        except ValueError:
            return None
    if not isinstance(args, dict):
        return None
    return ToolCall(new_call_id(), obj["name"], json.dumps(args, ensure_ascii=False))


def extract_tool_calls(text: str) -> tuple[str | None, list[ToolCall]]:
    """(content, calls) of a finished answer. With calls, content is the text outside the
    blocks, stripped (None when nothing is left)."""
    if START not in text:
        return text, []
    calls: list[ToolCall] = []
    for m in _BLOCK.finditer(text):
        call = parse_call(m.group(1))
        if call is None:
            return text, []
        calls.append(call)
    if not calls:
        return text, []
    rest = _BLOCK.sub("", text).strip()
    return (rest or None), calls


class StreamingToolParser:
    """Feed text deltas (`push`), then `finish`; each returns what to emit, in order: content
    strings and complete `ToolCall`s. Mutates itself."""

    def __init__(self) -> None:
        self._pending = ""  # content held back: whitespace, or a possible start of START
        self._call: str | None = None  # inside a block: its text so far
        self._dropped = ""  # whitespace before the open block
        self.calls = 0

    def push(self, text: str) -> list[str | ToolCall]:
        out: list[str | ToolCall] = []
        self._pending += text
        while self._pending:
            if self._call is not None:
                buf = self._call + self._pending
                end = buf.find(END)
                if end == -1:
                    self._call, self._pending = buf, ""
                    break
                body, self._pending = buf[:end], buf[end + len(END):]
                self._call = None
                call = parse_call(body)
                if call is None:  # not a call after all: it was content
                    out.append(self._dropped + START + body + END)
                else:
                    self.calls += 1
                    out.append(call)
                self._dropped = ""
                continue
            start = self._pending.find(START)
            if start != -1:
                before = self._pending[:start]
                kept = before.rstrip() if self.calls == 0 else before.strip()
                if kept:
                    out.append(kept)
                # whitespace next to a call is dropped, unless the block is not a call
                self._dropped = before[len(kept):] if self.calls == 0 else ""
                self._pending = self._pending[start + len(START):]
                self._call = ""
                continue
            keep = _partial_start(self._pending)
            head, tail = self._pending[:len(self._pending) - keep], self._pending[len(self._pending) - keep:]
            stripped = head.rstrip()
            if stripped:  # trailing whitespace waits: it is dropped if a call follows
                out.append(stripped)
                tail = head[len(stripped):] + tail
            else:
                tail = head + tail
            self._pending = tail
            break
        return out

    def finish(self) -> list[str | ToolCall]:
        """The end of the answer: held-back text, and an unfinished block, are content."""
        out: list[str | ToolCall] = []
        if self._call is not None:
            out.append(self._dropped + START + self._call + self._pending)
        elif self._pending and (self.calls == 0 or self._pending.strip()):
            out.append(self._pending)
        self._pending, self._call = "", None
        return out


def _partial_start(text: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of START."""
    for n in range(min(len(START) - 1, len(text)), 0, -1):
        if START.startswith(text[-n:]):
            return n
    return 0
