"""The official openai client against a real HTTP server over the echo backend."""

from __future__ import annotations

from collections.abc import Callable

import openai
import pytest
from server_harness import RunningServer

from dualpath.server.echo_backend import EchoBackend

Serve = Callable[..., RunningServer]


def client(srv: RunningServer, api_key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.url + "/v1", api_key=api_key, max_retries=0, timeout=30)


def test_completion_stream_and_not_agree(serve: Serve) -> None:
    c = client(serve(EchoBackend()))
    full = c.completions.create(model="echo", prompt="Once upon a time", max_tokens=12,
                                temperature=0)
    assert full.choices[0].finish_reason == "length"
    assert len(full.choices[0].text) == 12
    assert full.usage is not None
    assert (full.usage.prompt_tokens, full.usage.completion_tokens) == (16, 12)
    chunks = list(c.completions.create(model="echo", prompt="Once upon a time", max_tokens=12,
                                       temperature=0, stream=True,
                                       stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].text for ch in chunks if ch.choices)
    assert text == full.choices[0].text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 12
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "length"


def test_chat_stream_and_not_agree(serve: Serve) -> None:
    c = client(serve(EchoBackend()))
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    full = c.chat.completions.create(model="echo", messages=messages, max_tokens=9,  # type: ignore[arg-type]
                                     temperature=0)
    msg = full.choices[0].message
    assert msg.role == "assistant" and msg.content is not None and len(msg.content) == 9
    stream = c.chat.completions.create(model="echo", messages=messages, max_tokens=9,  # type: ignore[arg-type]
                                       temperature=0, stream=True)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == msg.content
    assert chunks[-1].choices[0].finish_reason == "length"
    assert all(ch.usage is None for ch in chunks)  # include_usage not requested


def test_second_turn_hits_cache_and_matches_cold_run(serve: Serve) -> None:
    warm = client(serve(EchoBackend(block_tokens=16)))
    turn1 = [{"role": "user", "content": "List the files in the repository, please."}]
    r1 = warm.chat.completions.create(model="echo", messages=turn1, max_tokens=20,  # type: ignore[arg-type]
                                      temperature=0)
    assert r1.usage is not None and r1.usage.prompt_tokens_details is not None
    assert r1.usage.prompt_tokens_details.cached_tokens == 0
    turn2 = [*turn1, {"role": "assistant", "content": r1.choices[0].message.content},
             {"role": "user", "content": "Now open README.md."}]
    r2 = warm.chat.completions.create(model="echo", messages=turn2, max_tokens=20,  # type: ignore[arg-type]
                                      temperature=0)
    assert r2.usage is not None and r2.usage.prompt_tokens_details is not None
    cached = r2.usage.prompt_tokens_details.cached_tokens
    assert cached is not None and cached > 0 and cached % 16 == 0
    assert cached <= r2.usage.prompt_tokens - 1
    cold = client(serve(EchoBackend(block_tokens=16)))
    r2_cold = cold.chat.completions.create(model="echo", messages=turn2, max_tokens=20,  # type: ignore[arg-type]
                                           temperature=0)
    assert r2_cold.usage is not None and r2_cold.usage.prompt_tokens_details is not None
    assert r2_cold.usage.prompt_tokens_details.cached_tokens == 0
    assert r2_cold.choices[0].message.content == r2.choices[0].message.content


def test_token_id_prompt_and_return_token_ids(serve: Serve) -> None:
    backend = EchoBackend()
    c = client(serve(backend))
    ids = backend.tokenizer.encode("agent step")
    full = c.completions.create(model="echo", prompt=ids, max_tokens=6, temperature=0,
                                extra_body={"return_token_ids": True})
    choice = full.model_dump()["choices"][0]
    assert len(choice["token_ids"]) == 6
    assert backend.tokenizer.decode(choice["token_ids"]) == choice["text"]
    assert choice["prompt_token_ids"] == ids
    text_prompt = c.completions.create(model="echo", prompt="agent step", max_tokens=6,
                                       temperature=0)
    assert text_prompt.choices[0].text == choice["text"]
    chunks = list(c.completions.create(model="echo", prompt=ids, max_tokens=6, temperature=0,
                                       stream=True, extra_body={"return_token_ids": True}))
    streamed = [t for ch in chunks for t in ch.model_dump()["choices"][0]["token_ids"]]
    assert streamed == choice["token_ids"]


def test_stop_string_excluded_stream_and_not(serve: Serve) -> None:
    c = client(serve(EchoBackend()))
    base = c.completions.create(model="echo", prompt="abc", max_tokens=40, temperature=0)
    text = base.choices[0].text
    stop = text[10:13]  # occurs first at index <= 10
    cut = text.index(stop)
    full = c.completions.create(model="echo", prompt="abc", max_tokens=40, temperature=0,
                                stop=[stop, "never-there"])
    assert full.choices[0].text == text[:cut]
    assert full.choices[0].finish_reason == "stop"
    assert full.usage is not None and full.usage.completion_tokens == cut + len(stop)
    chunks = list(c.completions.create(model="echo", prompt="abc", max_tokens=40,
                                       temperature=0, stop=stop, stream=True))
    assert "".join(ch.choices[0].text for ch in chunks) == text[:cut]
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_eos_min_tokens_and_ignore_eos(serve: Serve) -> None:
    c = client(serve(EchoBackend(eos_after_tokens=5)))
    natural = c.completions.create(model="echo", prompt="x", max_tokens=50, temperature=0)
    assert natural.choices[0].finish_reason == "stop"
    assert natural.usage is not None and natural.usage.completion_tokens == 6  # 5 + EOS
    assert len(natural.choices[0].text) == 5  # EOS is not text
    longer = c.completions.create(model="echo", prompt="x", max_tokens=50, temperature=0,
                                  extra_body={"min_tokens": 20})
    assert longer.usage is not None and longer.usage.completion_tokens == 21
    forced = c.completions.create(model="echo", prompt="x", max_tokens=50, temperature=0,
                                  extra_body={"ignore_eos": True})
    assert forced.choices[0].finish_reason == "length"
    assert forced.usage is not None and forced.usage.completion_tokens == 50


def test_seed_makes_sampling_reproducible(serve: Serve) -> None:
    c = client(serve(EchoBackend()))

    def sample(seed: int) -> str:
        r = c.completions.create(model="echo", prompt="roll", max_tokens=24, temperature=1.0,
                                 top_p=0.9, seed=seed)
        return r.choices[0].text

    assert sample(7) == sample(7)
    assert sample(7) != sample(8)


def test_stop_token_ids(serve: Serve) -> None:
    c = client(serve(EchoBackend()))
    text = c.completions.create(model="echo", prompt="q", max_tokens=40,
                                temperature=0).choices[0].text
    stop_char = text[3]
    r = c.completions.create(model="echo", prompt="q", max_tokens=40, temperature=0,
                             extra_body={"stop_token_ids": [ord(stop_char)]})
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].text == text[: text.index(stop_char) + 1]


def test_models_lists_served_model(serve: Serve) -> None:
    c = client(serve(EchoBackend(max_model_len=1234), served_model_name="smol"))
    models = c.models.list().data
    assert [m.id for m in models] == ["smol"]
    assert models[0].model_dump()["max_model_len"] == 1234
    r = c.completions.create(model="smol", prompt="hi", max_tokens=2)
    assert r.model == "smol"
    with pytest.raises(openai.NotFoundError):
        c.completions.create(model="echo", prompt="hi", max_tokens=2)
