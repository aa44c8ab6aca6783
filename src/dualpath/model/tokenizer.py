"""Tokenizers: byte-level BPE from GGUF metadata or tokenizer.json, and a byte tokenizer.

`Tokenizer` is the interface the CLI, server and tests use; `BPETokenizer` wraps the Rust
`tokenizers` library (built from a GGUF's `tokenizer.ggml.*` fields, or loaded from a Hugging
Face `tokenizer.json`); `ByteTokenizer` serves random-weight presets so tests need no files.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

from tokenizers import AddedToken, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as RustTokenizer

from dualpath.core.errors import ModelLoadError, UserInputError
from dualpath.core.guide import GuideTokenizer
from dualpath.model.chat_template import CHATML_TEMPLATE, render_chat

log = logging.getLogger(__name__)

# llama.cpp token types (gguf.TokenType): CONTROL and USER_DEFINED become special tokens.
_GGUF_CONTROL = 3
_GGUF_USER_DEFINED = 4


class Tokenizer(ABC):
    """Text <-> token ids, chat templating and the ids that end a generation."""

    chat_template: str | None
    eos_token_ids: tuple[int, ...]
    bos_token: str | None = None
    eos_token: str | None = None
    add_bos_token: bool = False

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of token ids (including special tokens)."""

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; special-token strings in it become their ids; no BOS added."""

    @abstractmethod
    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of `ids`; incomplete UTF-8 at the end shows as U+FFFD."""

    @property
    @abstractmethod
    def bos_token_id(self) -> int | None:
        """Id of the BOS token, if any."""

    def encode_prompt(self, text: str) -> list[int]:
        """`encode`, plus the BOS token when the checkpoint asks for one."""
        ids = self.encode(text)
        bos = self.bos_token_id
        if self.add_bos_token and bos is not None and (not ids or ids[0] != bos):
            ids = [bos, *ids]
        return ids

    def apply_chat_template(self, messages: Sequence[Mapping[str, Any]],
                            add_generation_prompt: bool = True,
                            tools: Sequence[Mapping[str, Any]] | None = None) -> str:
        """Render `messages` with the checkpoint's chat template (ChatML if it has none);
        `tools` (OpenAI tool objects) reach templates that render them."""
        extra: dict[str, Any] = {} if tools is None else {"tools": list(tools)}
        return render_chat(
            self.chat_template or CHATML_TEMPLATE, messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token or "", eos_token=self.eos_token or "", **extra,
        )

    @abstractmethod
    def guide_tokenizer(self, vocab_size: int) -> GuideTokenizer:
        """This vocabulary for guided decoding (`core.guide`); ids in [own size, vocab_size)
        (padding rows of the model) are never allowed. Costs about a second for 49k tokens."""

    def encode_chat(self, messages: Sequence[Mapping[str, Any]],
                    add_generation_prompt: bool = True) -> list[int]:
        return self.encode(self.apply_chat_template(messages, add_generation_prompt))


class BPETokenizer(Tokenizer):
    """A `tokenizers.Tokenizer` plus the chat template and special ids of its checkpoint."""

    def __init__(self, inner: RustTokenizer, *, chat_template: str | None,
                 eos_token_ids: Sequence[int], bos_token: str | None = None,
                 eos_token: str | None = None, add_bos_token: bool = False) -> None:
        self.inner = inner
        self.chat_template = chat_template
        self.eos_token_ids = tuple(eos_token_ids)
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.add_bos_token = add_bos_token

    @property
    def vocab_size(self) -> int:
        return int(self.inner.get_vocab_size(with_added_tokens=True))

    @property
    def bos_token_id(self) -> int | None:
        return None if self.bos_token is None else self.inner.token_to_id(self.bos_token)

    def encode(self, text: str) -> list[int]:
        return list(self.inner.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return str(self.inner.decode(list(ids), skip_special_tokens=skip_special_tokens))

    def guide_tokenizer(self, vocab_size: int) -> GuideTokenizer:
        return GuideTokenizer.from_tokenizer_json(self.inner.to_str(), vocab_size,
                                                  self.eos_token_ids)

    @classmethod
    def from_gguf_fields(cls, fields: Mapping[str, Any]) -> BPETokenizer:
        """Build from GGUF `tokenizer.ggml.*` metadata (GPT-2 style byte-level BPE only)."""
        model = fields.get("tokenizer.ggml.model")
        if model != "gpt2":
            raise ModelLoadError(f"GGUF tokenizer model {model!r} is not supported (only 'gpt2')")
        tokens: list[str] = list(fields["tokenizer.ggml.tokens"])
        types: list[int] = list(fields.get("tokenizer.ggml.token_type", [1] * len(tokens)))
        merges = [tuple(m.split(" ", 1)) for m in fields.get("tokenizer.ggml.merges", [])]
        vocab = {tok: i for i, tok in enumerate(tokens)}
        inner = RustTokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
        pre = fields.get("tokenizer.ggml.pre", "default")
        byte_level = pre_tokenizers.ByteLevel(
            add_prefix_space=bool(fields.get("tokenizer.ggml.add_space_prefix", False)),
            use_regex=True,
        )
        if pre in ("smollm", "starcoder", "refact"):
            # llama.cpp splits every digit first for these (same as their tokenizer.json)
            inner.pre_tokenizer = pre_tokenizers.Sequence(
                [pre_tokenizers.Digits(individual_digits=True), byte_level]
            )
        else:
            if pre not in ("gpt2", "default"):
                log.warning("GGUF pre-tokenizer %r approximated by GPT-2 byte-level", pre)
            inner.pre_tokenizer = byte_level
        inner.decoder = decoders.ByteLevel()
        special = [AddedToken(tok, special=True, normalized=False)
                   for tok, t in zip(tokens, types, strict=True)
                   if t in (_GGUF_CONTROL, _GGUF_USER_DEFINED)]
        inner.add_special_tokens(special)

        def token(key: str) -> str | None:
            idx = fields.get(key)
            return None if idx is None else tokens[int(idx)]

        eos_id = fields.get("tokenizer.ggml.eos_token_id")
        eos_ids = [int(eos_id)] if eos_id is not None else []
        eot_id = fields.get("tokenizer.ggml.eot_token_id")
        if eot_id is not None and int(eot_id) not in eos_ids:
            eos_ids.append(int(eot_id))
        return cls(
            inner,
            chat_template=fields.get("tokenizer.chat_template"),
            eos_token_ids=eos_ids,
            bos_token=token("tokenizer.ggml.bos_token_id"),
            eos_token=token("tokenizer.ggml.eos_token_id"),
            add_bos_token=bool(fields.get("tokenizer.ggml.add_bos_token", False)),
        )


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes as ids 0-255, then special tokens; for random-weight presets."""

    SPECIALS: tuple[str, ...] = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

    def __init__(self, vocab_size: int) -> None:
        if vocab_size < 256 + len(self.SPECIALS):
            raise UserInputError(f"a byte tokenizer needs vocab_size >= {256 + len(self.SPECIALS)}")
        self._vocab_size = vocab_size
        self._special_ids = {tok: 256 + i for i, tok in enumerate(self.SPECIALS)}
        self.chat_template = None  # apply_chat_template falls back to ChatML
        self.eos_token_ids = (self._special_ids["<|im_end|>"], self._special_ids["<|endoftext|>"])
        self.eos_token = "<|im_end|>"

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def bos_token_id(self) -> int | None:
        return None

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        rest = text
        while rest:
            hits = [(rest.find(s), s) for s in self.SPECIALS if s in rest]
            if not hits:
                ids.extend(rest.encode("utf-8"))
                break
            pos, tok = min(hits)
            ids.extend(rest[:pos].encode("utf-8"))
            ids.append(self._special_ids[tok])
            rest = rest[pos + len(tok):]
        return ids

    def guide_tokenizer(self, vocab_size: int) -> GuideTokenizer:
        return byte_guide_tokenizer(self.SPECIALS, max(vocab_size, self._vocab_size),
                                    self.eos_token_ids)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        out: list[str] = []
        buf = bytearray()
        for i in ids:
            if i < 256:
                buf.append(i)
                continue
            out.append(buf.decode("utf-8", errors="replace"))
            buf.clear()
            if not skip_special_tokens and i - 256 < len(self.SPECIALS):
                out.append(self.SPECIALS[i - 256])
        out.append(buf.decode("utf-8", errors="replace"))
        return "".join(out)


def byte_guide_tokenizer(specials: Sequence[str], vocab_size: int,
                         eos_token_ids: Sequence[int]) -> GuideTokenizer:
    """Ids 0-255 are their byte, then `specials`; the remaining ids are unused (special)."""
    tokens = [bytes([i]) for i in range(256)] + [s.encode() for s in specials]
    tokens += [b"<|unused_%d|>" % i for i in range(len(tokens), vocab_size)]
    return GuideTokenizer.from_token_bytes(tokens, eos_token_ids, range(256, vocab_size))
