"""The DualPath router against fake vLLM instances (aiohttp servers on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from dualpath.integrations.vllm.params import DualPathParams
from dualpath.integrations.vllm.router.app import RouterApp
from dualpath.integrations.vllm.router.cluster_spec import ClusterSpec, InstanceInfo
from dualpath.integrations.vllm.router.placement import Planner
from dualpath.kv.hashing import block_hashes
from dualpath.kv.layout import BlockGeometry
from dualpath.kv.store import MemoryKVStore
from dualpath.scheduler import GlobalScheduler, SchedulerConfig

N = 16
ID = "fake-model"
PROMPT = list(range(1, 4 * N + 4))


@dataclass
class FakeInstance:
    role: str
    fail_generate: bool = False
    hold_relayed: bool = False  # D: wait (like WAITING_FOR_REMOTE_KVS) until cancelled
    bodies: list[dict[str, Any]] = field(default_factory=list)
    cancelled: int = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/tokenize", self.tokenize)
        app.router.add_post("/v1/chat/completions", self.generate)
        app.router.add_post("/v1/completions", self.generate)
        app.router.add_get("/health", self.health)
        return app

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({})

    async def tokenize(self, request: web.Request) -> web.Response:
        return web.json_response({"tokens": PROMPT, "count": len(PROMPT)})

    async def generate(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.bodies.append(body)
        params = DualPathParams.from_request_params(body.get("kv_transfer_params"))
        if self.fail_generate:
            return web.json_response({"error": "boom"}, status=500)
        if self.role == "prefill":
            assert params is not None and params.role == "prefill"
            return web.json_response({"choices": [{"text": "x"}], "kv_transfer_params": {
                "dualpath": {"hit_tokens": params.hit_tokens, "relay_failed": False}}})
        if self.hold_relayed and params is not None:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        usage = {"prompt_tokens": len(PROMPT), "completion_tokens": 2,
                 "prompt_tokens_details": {"cached_tokens": len(PROMPT)}}
        if not body.get("stream"):
            return web.json_response({"choices": [{"message": {"content": "ok"}}],
                                      "usage": usage})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for chunk in ({"choices": [{"delta": {"content": "o"}}]},
                      {"choices": [{"delta": {"content": "k"}}]},
                      {"choices": [], "usage": usage}):
            await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        return resp


@dataclass
class Setup:
    client: TestClient
    router: RouterApp
    p: FakeInstance
    d: FakeInstance


@pytest.fixture
async def setup(request: pytest.FixtureRequest) -> AsyncIterator[Setup]:
    opts = getattr(request, "param", {})
    p = FakeInstance("prefill", fail_generate=opts.get("p_fails", False))
    d = FakeInstance("decode", hold_relayed=opts.get("d_holds", False))
    servers = [TestServer(p.app()), TestServer(d.app())]
    for s in servers:
        await s.start_server()
    instances = (
        InstanceInfo("prefill0", "prefill", 0, str(servers[0].make_url("")).rstrip("/"),
                     "tcp://127.0.0.1:7001"),
        InstanceInfo("decode0", "decode", 1, str(servers[1].make_url("")).rstrip("/"),
                     "tcp://127.0.0.1:7002", kv_capacity_tokens=10_000),
    )
    store = MemoryKVStore(BlockGeometry(2, N, 8))
    for h in block_hashes(PROMPT, N, ID)[:2]:
        store.put(h, np.zeros((2, N, 8), np.uint8))
    read_policy = opts.get("read_policy", "de-only")
    planner = Planner(instances, GlobalScheduler(SchedulerConfig(read_policy=read_policy)),
                      store, N, ID)
    router = RouterApp(planner, "m", stats=lambda: {"prefill0": {"bytes_read_pe_path": 5.0}})
    client = TestClient(TestServer(router.app))
    await client.start_server()
    yield Setup(client, router, p, d)
    await client.close()
    for s in servers:
        await s.close()


async def test_a_request_goes_to_p_and_d_with_matching_params(setup: Setup) -> None:
    r = await setup.client.post("/v1/chat/completions", json={
        "model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8,
        "stream_options": {"include_usage": True}})
    assert r.status == 200
    body = await r.json()
    assert body["usage"]["prompt_tokens_details"]["cached_tokens"] == 2 * N
    assert body["kv_transfer_params"]["dualpath"]["read_side"] == "de"
    (pb,), (db,) = setup.p.bodies, setup.d.bodies
    pp = DualPathParams.from_request_params(pb["kv_transfer_params"])
    dp = DualPathParams.from_request_params(db["kv_transfer_params"])
    assert pp is not None and dp is not None
    assert pp.key == dp.key and pp.hit_tokens == dp.hit_tokens == 2 * N
    assert (pp.role, dp.role) == ("prefill", "decode")
    assert pp.peer == "tcp://127.0.0.1:7002" and dp.peer == "tcp://127.0.0.1:7001"
    assert pb["max_tokens"] == 1 and pb["stream"] is False and "stream_options" not in pb
    assert db["max_tokens"] == 8
    assert setup.router.planner.books.idle()


async def test_streams_pass_through_with_our_cached_tokens(setup: Setup) -> None:
    r = await setup.client.post("/v1/completions", json={
        "model": "m", "prompt": PROMPT, "max_tokens": 2, "stream": True,
        "stream_options": {"include_usage": True}})
    assert r.status == 200
    lines = [ln for ln in (await r.text()).splitlines() if ln.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(ln[6:]) for ln in lines[:-1]]
    assert "".join(c["choices"][0]["delta"]["content"] for c in chunks if c["choices"]) == "ok"
    assert chunks[-1]["usage"]["prompt_tokens_details"]["cached_tokens"] == 2 * N
    assert setup.router.planner.books.idle()


@pytest.mark.parametrize("setup", [{"p_fails": True, "d_holds": True}], indirect=True)
async def test_a_failed_prefill_falls_back_to_the_decode_instance_alone(setup: Setup) -> None:
    r = await setup.client.post("/v1/chat/completions", json={
        "model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8})
    assert r.status == 200
    assert (await r.json())["choices"][0]["message"]["content"] == "ok"
    assert len(setup.d.bodies) == 2 and "kv_transfer_params" not in setup.d.bodies[1]
    assert setup.router.fallbacks == 1
    await asyncio.sleep(0.1)
    assert setup.d.cancelled == 1
    assert setup.router.planner.books.idle()


@pytest.mark.parametrize("setup", [{"read_policy": "pe-only"}], indirect=True)
async def test_metrics_report_our_names(setup: Setup) -> None:
    await setup.client.post("/v1/completions", json={"model": "m", "prompt": PROMPT})
    text = await (await setup.client.get("/metrics")).text()
    assert 'dualpath_bytes_read_total{path="pe"} 5' in text
    assert 'dualpath_router_requests_total{read_side="pe"} 1' in text
    assert 'dualpath_engine_tokens{engine="decode0"} 0' in text
    assert f"vllm:prefix_cache_hits_total {2 * N}" in text


@pytest.mark.parametrize("body, status", [
    ("not json", 400), ({"model": "other", "prompt": [1]}, 404),
    ({"prompt": [1], "n": 2}, 400), ({"prompt": []}, 400), ({"prompt": [1, -2]}, 400),
    ({"prompt": {"a": 1}}, 400), ({"prompt": [1], "max_tokens": "5"}, 400),
])
async def test_bad_requests_get_clear_errors(setup: Setup, body: Any, status: int) -> None:
    if isinstance(body, str):
        r = await setup.client.post("/v1/completions", data=body)
    else:
        r = await setup.client.post("/v1/completions", json=body)
    assert r.status == status
    assert "message" in (await r.json())["error"]
    assert not setup.p.bodies and not setup.d.bodies


def test_cluster_spec_validates(tmp_path) -> None:
    from dualpath.core.errors import ConfigError

    good = {"served_model_name": "m", "model_dir": "x", "dtype": "float32", "block_tokens": 64,
            "store_path": "s", "run_dir": "r", "instances": [
                {"name": "p", "role": "prefill", "node_id": 0, "url": "http://h:1",
                 "relay": "tcp://h:2"},
                {"name": "d", "role": "decode", "node_id": 1, "url": "http://h:3",
                 "relay": "tcp://h:4"}]}
    path = tmp_path / "c.json"
    path.write_text(json.dumps(good))
    assert len(ClusterSpec.load(path).instances) == 2
    bad = dict(good, instances=[dict(good["instances"][0], node_id=1), good["instances"][1]])
    with pytest.raises(ConfigError, match="mixes"):
        ClusterSpec.from_mapping(bad)
    with pytest.raises(ConfigError, match="at least one"):
        ClusterSpec.from_mapping(dict(good, instances=good["instances"][:1]))
    with pytest.raises(ConfigError):
        ClusterSpec.from_mapping(dict(good, instances=[{"name": "p"}]))
