"""The API agents need, through the official openai client over the echo backend: tool calls
(forced by grammar, parsed, streamed and not, a full round trip), response_format json_schema,
logprobs, n > 1, the vLLM utility endpoints, and a 400 for every option we refuse.

The echo backend picks its tokens without looking at the prompt, but a request with a grammar
gets only tokens the grammar (the real llguidance `core.guide`) allows: whatever it writes
must parse and validate, so these tests fail if the grammar, the guide or the parser is wrong.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import jsonschema
import openai
import pytest
from server_harness import RunningServer

from dualpath.server.echo_backend import EchoBackend

Serve = Callable[..., RunningServer]

# Enums and booleans: the echo backend's arbitrary (allowed) choices end quickly.
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "enum": ["Paris", "Rome", "Oslo"]},
                           "metric": {"type": "boolean"}},
            "required": ["city", "metric"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {"type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}},
                       "required": ["zone"], "additionalProperties": False},
    },
}
TOOLS: list[Any] = [WEATHER, TIME]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def client(srv: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def assert_valid_calls(calls: list[Any], only: str | None = None) -> None:
    assert calls
    for call in calls:
        assert call.type == "function" and call.id.startswith("call_")
        assert call.function.name in SCHEMAS and (only is None or call.function.name == only)
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_required_tool_call_parses_against_the_schema(serve: Serve, seed: int) -> None:
    c = client(serve(EchoBackend()))
    r = c.chat.completions.create(model="echo", messages=ASK, tools=TOOLS,  # type: ignore[arg-type]
                                  tool_choice="required", temperature=1.0, seed=seed,
                                  max_tokens=400)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    assert choice.message.content is None
    assert_valid_calls(choice.message.tool_calls or [])


def test_named_tool_choice_calls_that_function_once(serve: Serve) -> None:
    c = client(serve(EchoBackend()))
    r = c.chat.completions.create(
        model="echo", messages=ASK, tools=TOOLS, max_tokens=400,  # type: ignore[arg-type]
        tool_choice={"type": "function", "function": {"name": "get_time"}})
    calls = r.choices[0].message.tool_calls or []
    assert len(calls) == 1
    assert_valid_calls(calls, only="get_time")


def test_streamed_tool_call_matches_the_schema_and_the_whole_answer(serve: Serve) -> None:
    c = client(serve(EchoBackend()))
    kwargs: dict[str, Any] = dict(model="echo", messages=ASK, tools=TOOLS,
                                  tool_choice="required", temperature=1.0, seed=7,
                                  max_tokens=400, parallel_tool_calls=False)
    full = c.chat.completions.create(**kwargs)
    chunks = list(c.chat.completions.create(**kwargs, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    streamed = [tc for ch in chunks for tc in (ch.choices[0].delta.tool_calls or [])]
    assert len(streamed) == 1 and streamed[0].index == 0
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == ""
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    want = (full.choices[0].message.tool_calls or [])[0]
    assert streamed[0].function is not None
    assert (streamed[0].function.name, streamed[0].function.arguments) == (
        want.function.name, want.function.arguments)  # same seed, same call
    assert_valid_calls(streamed)  # type: ignore[arg-type]


def test_tool_round_trip_renders_calls_and_results_in_the_prompt(serve: Serve) -> None:
    srv = serve(EchoBackend())
    c = client(srv)
    first = c.chat.completions.create(model="echo", messages=ASK, tools=TOOLS,  # type: ignore[arg-type]
                                      tool_choice="required", max_tokens=400)
    call = (first.choices[0].message.tool_calls or [])[0]
    history: list[Any] = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature_c": 21}'},
    ]
    final = c.chat.completions.create(model="echo", messages=history, tools=TOOLS,
                                      max_tokens=8, temperature=0)
    assert final.choices[0].message.content  # "auto": free text is allowed
    status, tok = srv.post_json("/tokenize", {"messages": history, "tools": TOOLS})
    assert status == 200
    status, text = srv.post_json("/detokenize", {"tokens": tok["tokens"]})
    prompt = text["prompt"]
    assert "<tools>" in prompt and '"get_weather"' in prompt  # the tools, Hermes-style
    assert f'<tool_call>\n{{"name": "{call.function.name}"' in prompt  # the earlier call
    assert '<tool_response>\n{"temperature_c": 21}\n</tool_response>' in prompt
    assert final.usage is not None and final.usage.prompt_tokens == tok["count"]


def test_tool_choice_none_leaves_the_tools_out(serve: Serve) -> None:
    srv = serve(EchoBackend())
    _, with_tools = srv.post_json("/tokenize", {"messages": ASK, "tools": TOOLS})
    _, plain = srv.post_json("/tokenize", {"messages": ASK})
    assert with_tools["count"] > plain["count"]
    r = client(srv).chat.completions.create(model="echo", messages=ASK, tools=TOOLS,  # type: ignore[arg-type]
                                            tool_choice="none", max_tokens=5)
    assert r.usage is not None and r.usage.prompt_tokens == plain["count"]
    assert r.choices[0].finish_reason == "length" and not r.choices[0].message.tool_calls


PERSON = {
    "type": "object",
    "properties": {"name": {"enum": ["Ada", "Grace"]}, "admin": {"type": "boolean"},
                   "team": {"enum": ["core", "infra", None]}},
    "required": ["name", "admin", "team"],
    "additionalProperties": False,
}


@pytest.mark.parametrize("stream", [False, True])
def test_json_schema_response_validates(serve: Serve, stream: bool) -> None:
    c = client(serve(EchoBackend()))
    fmt: Any = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}
    for seed in range(3):
        kwargs: dict[str, Any] = dict(model="echo", messages=ASK, response_format=fmt,
                                      temperature=1.0, seed=seed, max_tokens=300)
        if stream:
            chunks = list(c.chat.completions.create(**kwargs, stream=True))
            text = "".join(ch.choices[0].delta.content or "" for ch in chunks)
            finish = chunks[-1].choices[0].finish_reason
        else:
            r = c.chat.completions.create(**kwargs)
            text, finish = r.choices[0].message.content or "", r.choices[0].finish_reason
        assert finish == "stop"
        jsonschema.validate(json.loads(text), PERSON)


def test_json_object_response_is_an_object(serve: Serve) -> None:
    c = client(serve(EchoBackend()))
    # Any object: the echo backend may write long strings, so this only checks the start and,
    # when the answer ended by itself, that it parses.
    r = c.chat.completions.create(model="echo", messages=ASK, max_tokens=64,  # type: ignore[arg-type]
                                  response_format={"type": "json_object"})
    text = r.choices[0].message.content or ""
    assert text.lstrip().startswith("{")
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)


def test_logprobs_chat_and_completion(serve: Serve) -> None:
    c = client(serve(EchoBackend()))
    r = c.chat.completions.create(model="echo", messages=ASK, max_tokens=6,  # type: ignore[arg-type]
                                  logprobs=True, top_logprobs=3)
    lp = r.choices[0].logprobs
    assert lp is not None and lp.content is not None and len(lp.content) == 6
    assert "".join(t.token for t in lp.content) == r.choices[0].message.content
    for t in lp.content:
        assert t.logprob <= 0 and len(t.top_logprobs) == 3
        assert t.bytes == list(t.token.encode())
    cr = c.completions.create(model="echo", prompt="abc", max_tokens=5, logprobs=2)
    clp = cr.choices[0].logprobs
    assert clp is not None and clp.tokens is not None and len(clp.tokens) == 5
    assert clp.text_offset == [sum(len(t) for t in clp.tokens[:i]) for i in range(5)]
    assert all(len(d) <= 2 for d in clp.top_logprobs or [])
    chunks = list(c.chat.completions.create(model="echo", messages=ASK, max_tokens=6,  # type: ignore[arg-type]
                                            logprobs=True, stream=True))
    streamed = [t for ch in chunks if ch.choices and ch.choices[0].logprobs
                for t in ch.choices[0].logprobs.content or []]
    assert len(streamed) == 6


@pytest.mark.parametrize("stream", [False, True])
def test_n_choices(serve: Serve, stream: bool) -> None:
    c = client(serve(EchoBackend()))
    kwargs: dict[str, Any] = dict(model="echo", messages=ASK, n=2, max_tokens=10,
                                  temperature=1.0, seed=5)
    if stream:
        chunks = list(c.chat.completions.create(**kwargs, stream=True))
        texts = {i: "".join(ch.choices[0].delta.content or "" for ch in chunks
                            if ch.choices and ch.choices[0].index == i) for i in (0, 1)}
        finishes = [ch.choices[0] for ch in chunks if ch.choices and ch.choices[0].finish_reason]
        assert sorted(f.index for f in finishes) == [0, 1]
    else:
        r = c.chat.completions.create(**kwargs)
        assert [ch.index for ch in r.choices] == [0, 1]
        texts = {ch.index: ch.message.content or "" for ch in r.choices}
        assert r.usage is not None and r.usage.completion_tokens == 20
    assert len(texts[0]) == len(texts[1]) == 10
    assert texts[0] != texts[1]  # seed + i: the samples differ


def test_n_above_max_running_is_400(serve: Serve) -> None:
    c = client(serve(EchoBackend(), max_running=2))
    with pytest.raises(openai.BadRequestError) as info:
        c.chat.completions.create(model="echo", messages=ASK, n=3)  # type: ignore[arg-type]
    assert info.value.body["param"] == "n"  # type: ignore[index]


def test_sampling_knobs_are_accepted(serve: Serve) -> None:
    c = client(serve(EchoBackend()))
    r = c.completions.create(model="echo", prompt="abc", max_tokens=4, presence_penalty=0.5,
                             frequency_penalty=0.5, logit_bias={"97": 5},
                             extra_body={"top_k": 5, "min_p": 0.1, "repetition_penalty": 1.2})
    assert len(r.choices[0].text) == 4


def test_tokenize_detokenize_version(serve: Serve) -> None:
    srv = serve(EchoBackend())
    status, tok = srv.post_json("/tokenize", {"prompt": "héllo", "return_token_strs": True})
    assert status == 200 and tok["count"] == len(tok["tokens"]) == len("héllo".encode())
    assert tok["max_model_len"] > 0 and len(tok["token_strs"]) == tok["count"]
    status, text = srv.post_json("/detokenize", {"tokens": tok["tokens"]})
    assert (status, text) == (200, {"prompt": "héllo"})
    status, _, raw = srv.request("GET", "/version")
    assert status == 200 and isinstance(json.loads(raw)["version"], str)
    status, err = srv.post_json("/detokenize", {"tokens": [10**6]})
    assert status == 400 and err["error"]["param"] == "tokens"
    status, err = srv.post_json("/tokenize", {"prompt": 3})
    assert status == 400


@pytest.mark.parametrize(("extra", "param"), [
    ({"tool_choice": "required"}, "tool_choice"),  # no tools
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice"),
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools.0.function.name"),
    ({"tools": TOOLS, "tool_choice": "required", "response_format": {"type": "json_object"}},
     "response_format"),
    ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
    ({"response_format": {"type": "json_schema",
                          "json_schema": {"name": "x", "schema": {"type": "no-such-type"}}}},
     "response_format"),
    ({"response_format": {"type": "yaml"}}, "response_format.type"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"logit_bias": {"99999": 1}}, "logit_bias"),
    ({"logit_bias": {"1": 101}}, "logit_bias.1"),
    ({"functions": [{"name": "f"}]}, "functions"),
    ({"store": True}, "store"),
    ({"audio": {"voice": "x"}}, "audio"),
    ({"reasoning_effort": "low"}, "reasoning_effort"),
    ({"guided_json": {"type": "object"}}, "guided_json"),
    ({"use_beam_search": True}, "use_beam_search"),
])
def test_refused_or_invalid_agent_fields_are_400_naming_them(serve: Serve, extra: dict,
                                                            param: str) -> None:
    srv = serve(EchoBackend())
    status, body = srv.post_json("/v1/chat/completions",
                                 {"messages": ASK, "max_tokens": 4, **extra})
    assert status == 400, body
    assert body["error"]["param"] == param, body
    # and the server goes on serving
    status, ok = srv.post_json("/v1/chat/completions", {"messages": ASK, "max_tokens": 2})
    assert status == 200, ok


def test_unsupported_field_is_400_with_the_openai_client(serve: Serve) -> None:
    c = client(serve(EchoBackend()))
    with pytest.raises(openai.BadRequestError) as info:
        c.chat.completions.create(model="echo", messages=ASK, store=True)  # type: ignore[arg-type]
    assert "store" in str(info.value)
