"""The agent API end to end: `dualpath serve` (1P2D, real SmolLM2-135M-Instruct, fp32) driven by
the official openai client. A forced tool call's arguments validate against the tool's schema
(streamed and not, and the two agree); a json_schema answer validates; greedy logprobs rank
the chosen token first; n=2 gives two choices; an unsupported field is a 400; /tokenize and
/detokenize round-trip. Slow: starts the cluster (four processes) and decodes on the CPU.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import openai
import pytest

pytestmark = pytest.mark.slow

WEATHER: Any = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object",
                   "properties": {"city": {"type": "string"},
                                  "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
ASK: Any = [{"role": "user", "content": "What is the weather in Paris? Use celsius."}]
PERSON = {"type": "object",
          "properties": {"name": {"type": "string", "maxLength": 20},
                         "age": {"type": "integer", "minimum": 0, "maximum": 150},
                         "languages": {"type": "array", "maxItems": 3,
                                       "items": {"type": "string", "maxLength": 15}}},
          "required": ["name", "age", "languages"], "additionalProperties": False}


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    store = tmp_path_factory.mktemp("kv")
    exe = Path(sys.executable).parent / "dualpath"
    proc = subprocess.Popen([str(exe), "serve", "--port", "0", "--store-path", str(store)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None
    try:
        found = None
        for line in proc.stdout:
            if "listening on http://" in line:
                found = line.split("listening on ")[1].split()[0]
                break
        assert found, "dualpath serve did not start"
        yield found
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=600)


def test_required_tool_call_validates_streamed_and_not(url: str) -> None:
    c = client(url)
    kwargs: dict[str, Any] = dict(model="smollm2", messages=ASK, tools=[WEATHER],
                                  tool_choice="required", temperature=0, max_tokens=100)
    r = c.chat.completions.create(**kwargs)
    assert r.choices[0].finish_reason == "tool_calls"
    calls = r.choices[0].message.tool_calls or []
    assert calls
    for call in calls:
        assert call.function.name == "get_weather"
        jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])
    chunks = list(c.chat.completions.create(**kwargs, stream=True))
    streamed = [tc for ch in chunks if ch.choices for tc in (ch.choices[0].delta.tool_calls or [])]
    assert [(t.function.name, t.function.arguments) for t in streamed if t.function] == [
        (t.function.name, t.function.arguments) for t in calls]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    # the round trip: the call and its result go back in; "auto" may answer in text
    history = [*ASK, {"role": "assistant", "content": None, "tool_calls": [calls[0].model_dump()]},
               {"role": "tool", "tool_call_id": calls[0].id, "content": '{"temperature": 18}'}]
    final = c.chat.completions.create(model="smollm2", messages=history, tools=[WEATHER],
                                      temperature=0, max_tokens=16)
    assert final.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_json_schema_answer_validates(url: str) -> None:
    r = client(url).chat.completions.create(
        model="smollm2", temperature=0, max_tokens=120,
        messages=[{"role": "user", "content": "Describe a fictional programmer as JSON."}],
        response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON}})
    assert r.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(r.choices[0].message.content or ""), PERSON)


def test_logprobs_and_n(url: str) -> None:
    c = client(url)
    r = c.chat.completions.create(model="smollm2", messages=ASK, logprobs=True, top_logprobs=2,
                                  max_tokens=5, temperature=0)
    content = r.choices[0].logprobs.content if r.choices[0].logprobs else None
    assert content is not None and len(content) == 5
    for t in content:  # greedy: the chosen token is the most likely one
        assert t.top_logprobs[0].token == t.token and t.logprob == t.top_logprobs[0].logprob
        assert t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob
    r2 = c.chat.completions.create(model="smollm2", messages=ASK, n=2, temperature=1.0, seed=1,
                                   max_tokens=8, extra_body={"ignore_eos": True})
    assert [ch.index for ch in r2.choices] == [0, 1]
    assert r2.usage is not None and r2.usage.completion_tokens == 16


def test_unsupported_field_and_utility_endpoints(url: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client(url).chat.completions.create(model="smollm2", messages=ASK, store=True)
    assert info.value.body["param"] == "store"  # type: ignore[index]
    req = urllib.request.Request(url + "/tokenize", json.dumps({"prompt": "Hello world"}).encode(),
                                 {"Content-Type": "application/json"})
    tok = json.loads(urllib.request.urlopen(req).read())
    req = urllib.request.Request(url + "/detokenize", json.dumps({"tokens": tok["tokens"]}).encode(),
                                 {"Content-Type": "application/json"})
    assert json.loads(urllib.request.urlopen(req).read())["prompt"] == "Hello world"
