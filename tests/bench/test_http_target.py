"""The HTTP target against a small fake OpenAI-compatible server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web

from dualpath.bench import offline
from dualpath.workload.trace_file import write_trace
from dualpath.workload.trajectory import Trajectory, Turn


class FakeServer:
    """Streams `max_tokens` tokens (one per chunk) with `token_ids`, logging every request."""

    def __init__(self, with_ids: bool = True) -> None:
        self.with_ids = with_ids
        self.requests: list[dict[str, Any]] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        base = len(body["prompt"])
        for i in range(body["max_tokens"]):
            choice: dict[str, Any] = {"index": 0, "text": "x"}
            if self.with_ids:
                choice["token_ids"] = [1000 + base + i]
            await resp.write(f"data: {json.dumps({'choices': [choice]})}\n\n".encode())
        usage = {"prompt_tokens": base, "completion_tokens": body["max_tokens"],
                 "prompt_tokens_details": {"cached_tokens": base // 2}}
        await resp.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        return resp

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": "fake-model"}]})

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_get("/v1/models", self.models)
        runner = web.AppRunner(app)
        self._loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._started.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())

    def __enter__(self) -> FakeServer:
        self._thread.start()
        self._started.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@pytest.fixture
def trace(tmp_path) -> Iterator[str]:
    path = tmp_path / "t.jsonl"
    write_trace(path, [Trajectory(f"a{i}", (Turn(30, 4), Turn(6, 3), Turn(5, 2))) for i in range(3)])
    yield str(path)


def test_http_target_builds_prompts_from_returned_ids(trace, make_args) -> None:
    with FakeServer() as server:
        args = make_args(offline, ["--trace", trace, "--url", f"http://127.0.0.1:{server.port}",
                                   "--no-progress", "--vocab-size", "500"])
        report = offline.run(args)
    assert report["num_turns"] == 9 and report["length_mismatches"] == 0
    assert report["target"]["served_model"] == "fake-model"
    assert report["cached_tokens_fraction"] == pytest.approx(0.5, abs=0.05)
    reqs = server.requests
    assert len(reqs) == 9
    for r in reqs:
        assert r["stream"] and r["ignore_eos"] and r["return_token_ids"]
        assert r["max_tokens"] == r["min_tokens"] and r["temperature"] == 0.0
        assert all(17 <= t < 500 for t in r["prompt"][:30])
    # Turn 2's prompt = turn 1's prompt + the ids the server returned + 6 new tokens.
    firsts = [r for r in reqs if len(r["prompt"]) == 30]
    seconds = [r for r in reqs if len(r["prompt"]) == 30 + 4 + 6]
    assert len(firsts) == 3 and len(seconds) == 3
    heads = {tuple(r["prompt"]) + tuple(1000 + 30 + i for i in range(4)) for r in firsts}
    assert {tuple(r["prompt"][:34]) for r in seconds} == heads
    assert report["ttft_s_p50"] >= 0 and report["tpot_s_p50"] >= 0


def test_server_without_token_ids_is_a_clear_error(trace, capsys) -> None:
    from dualpath.cli.main import main

    with FakeServer(with_ids=False) as server:
        rc = main(["bench", "offline", "--trace", trace, "--url",
                   f"http://127.0.0.1:{server.port}", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and "return_token_ids" in err and "Traceback" not in err


def test_unreachable_server_is_one_line(trace, capsys) -> None:
    from dualpath.cli.main import main

    rc = main(["bench", "offline", "--trace", trace, "--url", "http://127.0.0.1:9",
               "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot reach" in err and len(err.strip().splitlines()) == 1
