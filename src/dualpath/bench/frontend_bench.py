"""`dualpath bench frontend`: what the HTTP layer costs, and SmolLM2 latency under load.

Part 1 (always): the echo backend served by `python -m dualpath.server.run` in its own process;
a load generator here (aiohttp, one connection per concurrent client) sends non-streamed
1-token completions. Reports requests/s at `--concurrency` clients, the latency of one client
at a time, and the same request made by calling the backend directly in-process, so
`added_latency_s_p50` is what HTTP + validation + JSON cost per request.

Part 2 (with `--url` or `--backend`): agents (1, 8, 32 concurrently by default) each run a
multi-turn conversation of streamed chat completions against a real model (SmolLM2 from the
cluster, or any OpenAI-compatible server); reports TTFT and TPOT percentiles per concurrency.
`--backend module:factory` serves a `Backend` made by that factory (through the same runner).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from typing import Any

from tqdm import tqdm

from dualpath.bench.http_target import sse_json
from dualpath.bench.report import format_table, machine_info
from dualpath.core.errors import UserInputError
from dualpath.workload.metrics import percentile


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--requests", type=int, default=20000,
                        help="requests in the throughput run (default 20000)")
    parser.add_argument("--concurrency", type=int, default=64,
                        help="concurrent clients in the throughput run (default 64)")
    parser.add_argument("--latency-requests", type=int, default=2000,
                        help="sequential requests for the one-client latency (default 2000)")
    parser.add_argument("--stream-requests", type=int, default=1000,
                        help="streamed requests in the SSE throughput run (default 1000)")
    parser.add_argument("--stream-tokens", type=int, default=32,
                        help="tokens per streamed request (default 32)")
    parser.add_argument("--skip-http", action="store_true",
                        help="skip the echo-backend HTTP overhead part")
    parser.add_argument("--url", default=None,
                        help="base URL of a running server for the model part (e.g. http://127.0.0.1:8000)")
    parser.add_argument("--backend", default=None, metavar="MODULE:FACTORY",
                        help="serve the Backend returned by FACTORY() for the model part")
    parser.add_argument("--api-key", default=None, help="API key of the --url server")
    parser.add_argument("--agents", default="1,8,32",
                        help="comma-separated concurrent agent counts (default 1,8,32)")
    parser.add_argument("--turns", type=int, default=3, help="turns per agent (default 3)")
    parser.add_argument("--gen-tokens", type=int, default=32,
                        help="tokens generated per turn, forced with min_tokens (default 32)")
    parser.add_argument("--turn-timeout-s", type=float, default=300.0,
                        help="a turn taking longer fails and ends its agent (default 300)")


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.requests < 1 or args.concurrency < 1 or args.latency_requests < 1:
        raise UserInputError("--requests, --concurrency and --latency-requests must be >= 1")
    result: dict[str, Any] = {"benchmark": "frontend", "machine": machine_info()}
    if not args.skip_http:
        result.update(_http_overhead(args))
    result["model"] = _model_part(args)
    return result


def _http_overhead(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {}
    with _ServerProcess([]) as server:
        http = asyncio.run(_http_part(server.url, args))
    result.update(http)
    direct = asyncio.run(_direct_latency(args.latency_requests))
    result["direct_latency_s_p50"] = direct[0]
    result["direct_latency_s_p99"] = direct[1]
    result["added_latency_s_p50"] = result["latency_s_p50"] - direct[0]
    result["added_latency_s_p99"] = result["latency_s_p99"] - direct[1]
    print(format_table(
        ["measure", "value"],
        [["requests_per_s (non-streamed, 1 token)", result["requests_per_s"]],
         ["concurrency", args.concurrency],
         ["latency p50 / p99 at load (ms)",
          f"{result['load_latency_s_p50'] * 1e3:.2f} / {result['load_latency_s_p99'] * 1e3:.2f}"],
         ["one client: latency p50 / p99 (ms)",
          f"{result['latency_s_p50'] * 1e3:.3f} / {result['latency_s_p99'] * 1e3:.3f}"],
         ["direct backend call p50 / p99 (ms)",
          f"{direct[0] * 1e3:.4f} / {direct[1] * 1e3:.4f}"],
         ["added latency p50 / p99 (ms)",
          f"{result['added_latency_s_p50'] * 1e3:.3f} / {result['added_latency_s_p99'] * 1e3:.3f}"],
         ["streamed: requests/s, tokens/s",
          f"{result['stream_requests_per_s']:.0f}, {result['stream_tokens_per_s']:.0f}"],
         ["errors", result["errors"]]],
    ))
    return result


class _ServerProcess:
    """`python -m dualpath.server.run` on a free port; stopped with SIGTERM on exit."""

    def __init__(self, extra_args: list[str]) -> None:
        self._args = [sys.executable, "-m", "dualpath.server.run", "--port", "0", *extra_args]
        self._proc: subprocess.Popen[str] | None = None
        self.url = ""

    def __enter__(self) -> _ServerProcess:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self._proc = subprocess.Popen(self._args, stdout=subprocess.PIPE, text=True, env=env)
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()  # "... listening on http://HOST:PORT ..."
        for word in line.split():
            if word.startswith("http://"):
                self.url = word
        if not self.url:
            self._proc.kill()
            raise UserInputError(f"the server did not start: {line.strip()!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()


async def _http_part(url: str, args: argparse.Namespace) -> dict[str, Any]:
    import aiohttp

    body = json.dumps({"model": "echo", "prompt": "Hello, agent!", "max_tokens": 1,
                       "temperature": 0}).encode()
    headers = {"Content-Type": "application/json"}
    endpoint = url + "/v1/completions"
    errors = 0

    async def one(session: aiohttp.ClientSession) -> float:
        nonlocal errors
        t0 = time.perf_counter()
        async with session.post(endpoint, data=body, headers=headers) as resp:
            await resp.read()
            if resp.status != 200:
                errors += 1
        return time.perf_counter() - t0

    connector = aiohttp.TCPConnector(limit=args.concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(200):  # warm up connections and code paths
            await one(session)
        latencies = [await one(session) for _ in range(args.latency_requests)]
        remaining = args.requests
        load_latencies: list[float] = []

        async def client() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                load_latencies.append(await one(session))

        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(args.concurrency)))
        elapsed_s = time.perf_counter() - t0
        stream = await _stream_throughput(session, endpoint, args)
    return {
        **stream,
        "requests_per_s": args.requests / elapsed_s,
        "requests": args.requests,
        "concurrency": args.concurrency,
        "elapsed_s": elapsed_s,
        "errors": errors,
        "load_latency_s_p50": percentile(load_latencies, 50),
        "load_latency_s_p99": percentile(load_latencies, 99),
        "latency_s_p50": percentile(latencies, 50),
        "latency_s_p99": percentile(latencies, 99),
    }


async def _stream_throughput(session: Any, endpoint: str,
                             args: argparse.Namespace) -> dict[str, Any]:
    """Streamed completions of `--stream-tokens` tokens: what SSE framing costs per token."""
    n_tokens = args.stream_tokens
    body = json.dumps({"model": "echo", "prompt": "Hello, agent!", "max_tokens": n_tokens,
                       "min_tokens": n_tokens, "temperature": 0, "stream": True}).encode()
    headers = {"Content-Type": "application/json"}
    remaining = args.stream_requests
    chunks = 0

    async def client() -> None:
        nonlocal remaining, chunks
        while remaining > 0:
            remaining -= 1
            async with session.post(endpoint, data=body, headers=headers) as resp:
                async for line in resp.content:
                    if line.startswith(b"data: {"):
                        chunks += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(args.concurrency)))
    elapsed_s = time.perf_counter() - t0
    return {"stream_requests": args.stream_requests, "stream_tokens_per_request": n_tokens,
            "stream_requests_per_s": args.stream_requests / elapsed_s,
            # every stream ends with one finish_reason chunk; the others carry one token each
            "stream_tokens_per_s": (chunks - args.stream_requests) / elapsed_s}


async def _direct_latency(n: int) -> tuple[float, float]:
    """The same 1-token request through EchoBackend.generate, no HTTP: the baseline."""
    from dualpath.core.requests import GenerateRequest, SamplingParams
    from dualpath.server.echo_backend import EchoBackend

    backend = EchoBackend()
    prompt = tuple(backend.tokenizer.encode("Hello, agent!"))
    sampling = SamplingParams(max_tokens=1, temperature=0.0)
    times: list[float] = []
    for i in range(n + 200):
        t0 = time.perf_counter()
        async for _ in backend.generate(GenerateRequest(f"r{i}", prompt, sampling)):
            pass
        if i >= 200:
            times.append(time.perf_counter() - t0)
    return percentile(times, 50), percentile(times, 99)


def _model_part(args: argparse.Namespace) -> dict[str, Any] | None:
    if args.url is None and args.backend is None:
        print("model part skipped: pass --url URL (a running `dualpath serve`) or "
              "--backend MODULE:FACTORY", file=sys.stderr)
        return None
    counts = [int(c) for c in args.agents.split(",") if c.strip()]
    if not counts or min(counts) < 1:
        raise UserInputError(f"--agents must list positive integers, got {args.agents!r}")
    if args.url is not None:
        return run_agents(args.url, counts, args.turns, args.gen_tokens, args.api_key,
                          args.turn_timeout_s)
    with _ServerProcess(["--backend", args.backend]) as server:
        return run_agents(server.url, counts, args.turns, args.gen_tokens, None,
                          args.turn_timeout_s)


def run_agents(url: str, counts: list[int], turns: int, gen_tokens: int,
               api_key: str | None, turn_timeout_s: float = 300.0) -> dict[str, Any]:
    """TTFT / TPOT of streamed multi-turn chats, `count` agents at a time, for each count."""
    out: dict[str, Any] = {"url": url, "model": None, "turns": turns, "gen_tokens": gen_tokens,
                           "runs": []}
    rows = []
    for count in counts:
        start_s = time.perf_counter()
        records, failures = asyncio.run(
            _agents(url, count, turns, gen_tokens, api_key, turn_timeout_s))
        wall_s = time.perf_counter() - start_s
        ttft = [r["ttft_s"] for r in records]
        tpot = [r["tpot_s"] for r in records if r["tpot_s"] is not None]
        run_result = {
            "agents": count,
            "turns_done": len(records),
            "failed_turns": len(failures),
            "failures": failures[:5],
            "ttft_s_p50": percentile(ttft, 50), "ttft_s_p99": percentile(ttft, 99),
            "tpot_s_p50": percentile(tpot, 50), "tpot_s_p99": percentile(tpot, 99),
            "cached_tokens_total": sum(r["cached_tokens"] for r in records),
            "prompt_tokens_total": sum(r["prompt_tokens"] for r in records),
            "output_tokens_total": sum(r["tokens"] for r in records),
            "wall_s": wall_s,  # all agents' turns, first request to last answer
        }
        out["runs"].append(run_result)
        if records:
            out["model"] = records[0]["model"]
        rows.append([count, len(records), len(failures), run_result["ttft_s_p50"], run_result["ttft_s_p99"],
                     run_result["tpot_s_p50"], run_result["tpot_s_p99"]])
    print(format_table(["agents", "turns", "failed", "ttft_s_p50", "ttft_s_p99", "tpot_s_p50",
                        "tpot_s_p99"], rows))
    return out


async def _agents(url: str, count: int, turns: int, gen_tokens: int, api_key: str | None,
                  turn_timeout_s: float) -> tuple[list[dict[str, Any]], list[str]]:
    import aiohttp

    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    timeout = aiohttp.ClientTimeout(total=None, sock_read=600)
    records: list[dict[str, Any]] = []
    failures: list[str] = []
    progress = tqdm(total=count * turns, desc=f"{count} agent(s)", unit="turn", file=sys.stderr)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:
        async with session.get(url + "/v1/models") as resp:
            model = (await resp.json())["data"][0]["id"]

        async def agent(agent_id: int) -> None:
            messages = [{"role": "system", "content": "You are a helpful coding agent."}]
            for turn in range(turns):
                messages.append({"role": "user", "content":
                                 f"Agent {agent_id}, turn {turn}: summarise step {turn} "
                                 "of the build log and propose the next command."})
                try:
                    rec, text = await asyncio.wait_for(
                        _one_turn(session, url, model, messages, gen_tokens), turn_timeout_s)
                except (TimeoutError, aiohttp.ClientError, UserInputError) as exc:
                    failures.append(f"agent {agent_id} turn {turn}: {type(exc).__name__} {exc}")
                    return
                records.append(rec)
                progress.update(1)
                messages.append({"role": "assistant", "content": text})

        await asyncio.gather(*(agent(i) for i in range(count)))
    progress.close()
    return records, failures


async def _one_turn(session: Any, url: str, model: str, messages: list[dict[str, str]],
                    gen_tokens: int) -> tuple[dict[str, Any], str]:
    body = {"model": model, "messages": messages, "max_tokens": gen_tokens,
            "min_tokens": gen_tokens, "ignore_eos": True, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}, "return_token_ids": True}
    t0 = time.perf_counter()
    first_s: float | None = None
    last_s = t0
    n_tokens = 0
    texts: list[str] = []
    usage: dict[str, Any] = {}
    async with session.post(url + "/v1/chat/completions", json=body) as resp:
        if resp.status != 200:
            raise UserInputError(f"server answered {resp.status}: {await resp.text()}")
        async for chunk in sse_json(resp):
            if chunk.get("usage"):
                usage = chunk["usage"]
            for choice in chunk.get("choices", ()):
                ids = choice.get("token_ids") or ()
                if ids:
                    now = time.perf_counter()
                    first_s = now if first_s is None else first_s
                    last_s = now
                    n_tokens += len(ids)
                texts.append(choice.get("delta", {}).get("content") or "")
    ttft = (first_s if first_s is not None else last_s) - t0
    tpot = (last_s - first_s) / (n_tokens - 1) if first_s is not None and n_tokens > 1 else None
    details = usage.get("prompt_tokens_details") or {}
    return ({"model": model, "ttft_s": ttft, "tpot_s": tpot, "tokens": n_tokens,
             "prompt_tokens": usage.get("prompt_tokens", 0),
             "cached_tokens": details.get("cached_tokens", 0)}, "".join(texts))
