"""Streaming detokenization that only ever emits complete UTF-8 text.

A byte-level BPE token can end in the middle of a multi-byte character, and a token's text can
depend on its neighbours, so each step decodes a short window (from `prefix_offset`) and emits
what grew beyond the previously emitted text, holding back while the window ends in U+FFFD
(the same scheme as Hugging Face text-generation-inference).
"""

from __future__ import annotations

from dualpath.model.tokenizer import Tokenizer


class IncrementalDetokenizer:
    """Feed token ids one by one with `push`; call `flush` at the end for any held-back text."""

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0

    def _decode(self, start: int, end: int | None = None) -> str:
        return self.tokenizer.decode(self.ids[start:end], self.skip_special_tokens)

    def push(self, token_id: int) -> str:
        """Add one token; return the newly completed text (may be "")."""
        self.ids.append(int(token_id))
        prefix_text = self._decode(self._prefix_offset, self._read_offset)
        new_text = self._decode(self._prefix_offset)
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            self._prefix_offset = self._read_offset
            self._read_offset = len(self.ids)
            return new_text[len(prefix_text):]
        return ""

    def flush(self) -> str:
        """Whatever is still held back (incomplete UTF-8 shows as U+FFFD)."""
        prefix_text = self._decode(self._prefix_offset, self._read_offset)
        new_text = self._decode(self._prefix_offset)
        self._prefix_offset = self._read_offset = len(self.ids)
        return new_text[len(prefix_text):]
