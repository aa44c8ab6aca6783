"""Every error comes back in the OpenAI format with the right status."""

from __future__ import annotations

import json
from collections.abc import Callable

import openai
import pytest
from server_harness import RunningServer

from dualpath.server.echo_backend import EchoBackend

Serve = Callable[..., RunningServer]


def assert_openai_error(body: dict, *, param: str | None = None) -> dict:
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    if param is not None:
        assert err["param"] == param
    return err


@pytest.mark.parametrize(("body", "param"), [
    ({"prompt": "hi", "n": 10_000}, "n"),
    ({"prompt": "hi", "temperature": 3}, "temperature"),
    ({"prompt": "hi", "top_p": 0}, "top_p"),
    ({"prompt": "hi", "max_tokens": 0}, "max_tokens"),
    ({"prompt": "hi", "max_tokens": "many"}, "max_tokens"),
    ({"prompt": ["a", "b"]}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"prompt": [1, 99999]}, "prompt"),
    ({"prompt": [-1]}, "prompt"),
    ({"prompt": "hi", "logprobs": 21}, "logprobs"),
    ({"prompt": "hi", "logit_bias": {"x": 1}}, "logit_bias"),
    ({"prompt": "hi", "guided_regex": "a+"}, "guided_regex"),
    ({"prompt": "hi", "echo": True}, "echo"),
    ({"prompt": "hi", "max_tokens": 4, "min_tokens": 5}, None),
    ({"max_tokens": 4}, "prompt"),
])
def test_invalid_completion_parameters_are_400(serve: Serve, body: dict, param: str | None) -> None:
    srv = serve(EchoBackend())
    status, resp = srv.post_json("/v1/completions", body)
    assert status == 400, resp
    err = assert_openai_error(resp, param=param)
    assert err["type"] == "invalid_request_error"


def test_invalid_json_and_chat_fields_are_400(serve: Serve) -> None:
    srv = serve(EchoBackend())
    status, _, raw = srv.request("POST", "/v1/completions", b"{not json")
    assert status == 400 and assert_openai_error(json.loads(raw))
    status, resp = srv.post_json("/v1/chat/completions", {"messages": []})
    assert status == 400 and assert_openai_error(resp, param="messages")
    status, resp = srv.post_json("/v1/chat/completions",
                                 {"messages": [{"role": "wizard", "content": "x"}]})
    assert status == 400


def test_prompt_longer_than_context_reports_the_numbers(serve: Serve) -> None:
    srv = serve(EchoBackend(max_model_len=64))
    status, resp = srv.post_json("/v1/completions", {"prompt": "x" * 60, "max_tokens": 10})
    assert status == 400
    err = assert_openai_error(resp, param="prompt")
    assert err["code"] == "context_length_exceeded"
    for number in ("64", "70", "60", "10"):
        assert number in err["message"]
    status, resp = srv.post_json("/v1/chat/completions",
                                 {"messages": [{"role": "user", "content": "y" * 100}]})
    assert status == 400 and "64" in resp["error"]["message"]
    c = openai.OpenAI(base_url=srv.url + "/v1", api_key="k", max_retries=0)
    with pytest.raises(openai.BadRequestError):
        c.completions.create(model="echo", prompt="x" * 80, max_tokens=1)
    # The default max_tokens of a chat fills the context: 60 prompt tokens leave room.
    status, resp = srv.post_json("/v1/completions", {"prompt": "x" * 60, "max_tokens": 4})
    assert status == 200 and resp["usage"]["completion_tokens"] == 4


def test_unknown_path_method_and_model(serve: Serve) -> None:
    srv = serve(EchoBackend())
    status, _, raw = srv.request("GET", "/v1/nothing")
    assert status == 404 and assert_openai_error(json.loads(raw))["code"] == "not_found"
    status, headers, raw = srv.request("GET", "/v1/completions")
    assert status == 405 and "post" in headers.get("allow", "").lower()
    assert assert_openai_error(json.loads(raw))["code"] == "method_not_allowed"
    status, resp = srv.post_json("/v1/completions", {"model": "gpt-9", "prompt": "hi"})
    assert status == 404 and resp["error"]["code"] == "model_not_found"


def test_api_key_required_on_v1_only(serve: Serve) -> None:
    srv = serve(EchoBackend(), api_key="sekrit")
    body = {"prompt": "hi", "max_tokens": 2}
    status, resp = srv.post_json("/v1/completions", body)
    assert status == 401 and assert_openai_error(resp)["code"] == "invalid_api_key"
    status, resp = srv.post_json("/v1/completions", body, {"Authorization": "Bearer wrong"})
    assert status == 401
    status, _, _ = srv.request("GET", "/v1/models")
    assert status == 401
    # 401 wins over a malformed body: nothing is parsed before the key is checked.
    status, _, _ = srv.request("POST", "/v1/completions", b"{bad")
    assert status == 401
    status, resp = srv.post_json("/v1/completions", body, {"Authorization": "Bearer sekrit"})
    assert status == 200 and resp["usage"]["completion_tokens"] == 2
    assert srv.request("GET", "/health")[0] == 200
    assert srv.request("GET", "/metrics")[0] == 200
    assert srv.metric("dualpath_requests_rejected_total", 'reason="auth"') == 4
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=srv.url + "/v1", api_key="nope", max_retries=0).models.list()
    ok = openai.OpenAI(base_url=srv.url + "/v1", api_key="sekrit", max_retries=0)
    assert ok.models.list().data[0].id == "echo"


class _FailingBackend(EchoBackend):
    """Fails after two tokens: a crashed engine, seen from the server."""

    async def generate(self, request):  # type: ignore[no-untyped-def,override]
        n = 0
        async for ev in super().generate(request):
            if n == 2:
                raise RuntimeError("engine went away")
            n += 1
            yield ev


def test_backend_failure_is_500_or_in_band_error_and_counted(serve: Serve) -> None:
    srv = serve(_FailingBackend())
    status, resp = srv.post_json("/v1/completions", {"prompt": "x", "max_tokens": 10})
    assert status == 500
    assert assert_openai_error(resp)["type"] == "server_error"
    c = openai.OpenAI(base_url=srv.url + "/v1", api_key="k", max_retries=0)
    with pytest.raises(openai.APIError):
        list(c.completions.create(model="echo", prompt="x", max_tokens=10, stream=True))
    assert srv.metric("vllm:request_success_total",
                      'finished_reason="error",model_name="echo"') == 2
    assert srv.state.in_flight == 0
    assert srv.post_json("/v1/models", {})[0] == 405


def test_oversized_body_is_413(serve: Serve) -> None:
    srv = serve(EchoBackend(), max_body_bytes=1000)
    status, _, raw = srv.request("POST", "/v1/completions",
                                 {"prompt": "x" * 2000, "max_tokens": 1})
    assert status == 413 and assert_openai_error(json.loads(raw))["code"] == "request_too_large"
    assert srv.post_json("/v1/completions", {"prompt": "x" * 100, "max_tokens": 1})[0] == 200
