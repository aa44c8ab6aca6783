"""Incremental detokenization and stop strings: turn a token stream into text deltas.

`IncrementalDetokenizer` decodes a sliding window of tokens (the scheme vLLM used before
tokenizers grew native streaming decoders): the text of `ids[prefix:]` minus the text of
`ids[prefix:read]` is the new text, held back while it ends in an incomplete UTF-8 sequence.
A few prompt tokens seed the window so tokenizers that strip a leading space at the start of a
decode (SentencePiece) still produce the right first delta.

`StopStringMatcher` finds the first stop string in the growing output and holds back, while
streaming, the tail that could still turn out to be the start of a stop string, so stop text
never reaches the client.
"""

from __future__ import annotations

from collections.abc import Sequence

from dualpath.server.tokenizer import Tokenizer

# Prompt tokens used as decode context for the first generated token (vLLM uses 5 too).
_CONTEXT_TOKENS = 5


class IncrementalDetokenizer:
    """Feeds on generated token ids, returns the text each batch of ids adds. Mutates itself."""

    def __init__(self, tokenizer: Tokenizer, prompt_token_ids: Sequence[int]) -> None:
        self._tokenizer = tokenizer
        context = list(prompt_token_ids[-_CONTEXT_TOKENS:])
        self._ids: list[int] = context
        self._prefix = 0
        self._read = len(context)

    def push(self, token_ids: Sequence[int]) -> str:
        """Append generated ids; return the newly completed text (may be empty)."""
        self._ids.extend(token_ids)
        decode = self._tokenizer.decode
        prefix_text = decode(self._ids[self._prefix : self._read])
        full_text = decode(self._ids[self._prefix :])
        if len(full_text) > len(prefix_text) and not full_text.endswith("\ufffd"):
            self._prefix = self._read
            self._read = len(self._ids)
            return full_text[len(prefix_text) :]
        return ""

    def flush(self) -> str:
        """At the end of generation: whatever text is still held back (even if incomplete)."""
        decode = self._tokenizer.decode
        prefix_text = decode(self._ids[self._prefix : self._read])
        full_text = decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        return full_text[len(prefix_text) :] if len(full_text) > len(prefix_text) else ""


class StopStringMatcher:
    """Accumulates output text; reports what may be emitted and whether a stop string hit."""

    def __init__(self, stop: Sequence[str]) -> None:
        self._stop = tuple(s for s in stop if s)
        self._holdback = max((len(s) for s in self._stop), default=1) - 1
        self._text = ""
        self._emitted = 0
        self.stopped = False

    def push(self, delta: str, *, final: bool = False) -> str:
        """Add `delta`; return the text now safe to emit. Sets `stopped` on a match."""
        if self.stopped:
            return ""
        old_len = len(self._text)
        self._text += delta
        if self._stop:
            # A match not found before must end inside `delta`: search each stop string only
            # from where it could start, so a push costs O(total stop length + delta).
            hit = min(
                (i for i in (self._text.find(s, max(0, old_len - len(s) + 1))
                             for s in self._stop) if i != -1),
                default=-1,
            )
            if hit != -1:
                self.stopped = True
                self._text = self._text[:hit]
                return self._take(len(self._text))
        limit = len(self._text) if final else len(self._text) - self._holdback
        return self._take(limit)

    def _take(self, limit: int) -> str:
        if limit <= self._emitted:
            return ""
        out = self._text[self._emitted : limit]
        self._emitted = limit
        return out

    @property
    def text(self) -> str:
        """All output text so far (stop string and anything after it excluded)."""
        return self._text
