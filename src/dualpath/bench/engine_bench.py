"""`dualpath bench engine`: the 5-turn agent workload against `dualpath serve`, with Hugging
Face transformers fp32 on the same GGUF measured in the same run as the reference peer.

The workload is `engine_model`'s (`AgentShape`: turn 0 a 256-token prompt, each later turn
appends the last answer and 128 new tokens, 32 output tokens a turn, agents reading the same
text from different offsets). Against the server each agent sends its turns as streamed
`/v1/completions` with token-id prompts (so both systems see the very same tokens),
`min_tokens` = `max_tokens` and `ignore_eos`, greedy; all agents run concurrently. TTFT is
the time to the first streamed token, TPOT the mean gap between later tokens of a turn;
output tok/s is all generated tokens over the wall time of the run. `rss_bytes` is the
resident memory of `dualpath serve` and every process under it at the end of the run, and
`startup_s` the time from launching `dualpath serve` to its first 200 from /ready.

The transformers peer runs the same chunks bare (no server: `model_workers.py`, agents as one
batch in lockstep), so its TTFT is its whole-prompt prefill time per turn.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dualpath.bench.engine_model import (
    _TEXT,
    AgentShape,
    ModelBenchConfig,
    agent_chunks,
    run_model_bench,
)
from dualpath.bench.http_target import sse_json
from dualpath.bench.report import format_table, machine_info
from dualpath.core.errors import UserInputError
from dualpath.workload.metrics import percentile


@dataclass(frozen=True)
class EngineBenchConfig:
    model: str = "smollm2"
    agents: tuple[int, ...] = (1, 4)
    shape: AgentShape = field(default_factory=AgentShape)
    serve_args: tuple[str, ...] = ()  # extra `dualpath serve` flags (--dtype, --quantization...)
    transformers: bool = True
    startup_timeout_s: float = 600.0
    turn_timeout_s: float = 600.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--agents", default="1,4", help="agent counts (default 1,4)")
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--first-prompt-tokens", type=int, default=256)
    parser.add_argument("--append-tokens", type=int, default=128)
    parser.add_argument("--output-tokens", type=int, default=32)
    parser.add_argument("--serve-args", default="--dtype bfloat16 --quantization int4",
                        help="extra flags for `dualpath serve` (default: the fastest mode)")
    parser.add_argument("--no-transformers", action="store_true")
    parser.add_argument("--plot", metavar="PNG", default=None,
                        help="write TPOT / output tokens/s / RSS per system and agents")


def run(args: argparse.Namespace) -> dict[str, Any]:
    try:
        agents = tuple(int(a) for a in args.agents.split(",") if a.strip())
    except ValueError as exc:
        raise UserInputError(f"bad --agents: {exc}") from None
    if not agents or min(agents) < 1:
        raise UserInputError("--agents must list positive integers")
    config = EngineBenchConfig(
        model=args.model, agents=agents,
        shape=AgentShape(args.turns, args.first_prompt_tokens, args.append_tokens,
                         args.output_tokens),
        serve_args=tuple(args.serve_args.split()), transformers=not args.no_transformers)
    result = run_engine_bench(config)
    print(table(result))
    if args.plot:
        print(f"wrote {write_plot(result, args.plot)}")
    return result


def write_plot(result: dict[str, Any], path: str) -> str:
    """Three bar panels (TPOT p50, output tokens/s, RSS), one bar per (system, agents)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in result["runs"] if "error" not in r]
    labels = [f"{r['system']}\n{r['agents']} agent(s)" for r in runs]
    colors = ["tab:blue" if r["system"] == "dualpath" else "tab:gray" for r in runs]
    panels = (("TPOT p50 (ms)", [1e3 * (r.get("tpot_s_p50") or 0) for r in runs]),
              ("output tokens/s", [r.get("output_tok_s") or 0 for r in runs]),
              ("RSS (GiB)", [(r.get("rss_bytes") or 0) / 2**30 for r in runs]))
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, (title, values) in zip(axes, panels, strict=True):
        ax.bar(range(len(runs)), values, color=colors)
        ax.set_xticks(range(len(runs)), labels, fontsize=8)
        ax.set_title(title)
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle(f"dualpath bench engine ({' '.join(result.get('serve_args', []))}): "
                 f"start-up {result['startup_s']:.1f} s, TPOT ÷ transformers "
                 f"{result['tpot_over_transformers'] or float('nan'):.2f}")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def run_engine_bench(config: EngineBenchConfig) -> dict[str, Any]:
    from dualpath.model.source import load_config_and_tokenizer

    _, tokenizer = load_config_and_tokenizer(config.model)
    chunks = agent_chunks(tokenizer.encode(_TEXT), config.shape, max(config.agents))
    runs: list[dict[str, Any]] = []
    startup_s, serve_runs = _serve_and_measure(config, chunks)
    runs.extend(serve_runs)
    peer: dict[str, Any] | None = None
    if config.transformers:
        peer = run_model_bench(ModelBenchConfig(
            model=config.model, modes=(), transformers=True, batch_sizes=config.agents,
            shape=config.shape))
        for system in peer["systems"]:
            for r in system.get("runs", []):
                runs.append({"system": "transformers", "agents": r["batch"],
                             "ttft_s_p50": percentile(r["prefill_s_per_turn"], 50),
                             "tpot_s_p50": r["tpot_s_p50"], "output_tok_s": r["output_tok_s"],
                             "rss_bytes": system.get("rss_bytes")})
            if "error" in system:
                runs.append({"system": "transformers", "error": system["error"]})
    ours = next((r for r in runs if r["system"] == "dualpath" and r.get("agents") == 1), None)
    theirs = next((r for r in runs if r["system"] == "transformers" and r.get("agents") == 1),
                  None)
    ratio = (ours["tpot_s_p50"] / theirs["tpot_s_p50"]
             if ours and theirs and ours.get("tpot_s_p50") and theirs.get("tpot_s_p50") else None)
    return {"benchmark": "engine", "model": config.model, "serve_args": list(config.serve_args),
            "workload": {"turns": config.shape.turns,
                         "first_prompt_tokens": config.shape.first_prompt_tokens,
                         "append_tokens": config.shape.append_tokens,
                         "output_tokens": config.shape.output_tokens,
                         "agents": list(config.agents)},
            "runs": runs, "startup_s": startup_s, "tpot_over_transformers": ratio,
            "machine": machine_info()}


def _serve_and_measure(config: EngineBenchConfig,
                       chunks: list[list[list[int]]]) -> tuple[float, list[dict[str, Any]]]:
    exe = Path(sys.executable).with_name("dualpath")
    with tempfile.TemporaryDirectory(prefix="dualpath-bench-engine-") as store:
        cmd = [str(exe), "serve", "--model", config.model, "--port", "0", "--store-path", store,
               *config.serve_args]
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            url = _wait_ready(proc, start, config.startup_timeout_s)
            startup_s = time.perf_counter() - start
            runs = []
            for count in config.agents:
                print(f"dualpath serve: {count} agent(s)", file=sys.stderr)
                run = asyncio.run(_agents(url, chunks[:count], config))
                runs.append({**run, "rss_bytes": _tree_rss_bytes(proc.pid)})
            return startup_s, runs
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_ready(proc: subprocess.Popen[str], start: float, timeout_s: float) -> str:
    assert proc.stdout is not None
    url = None
    for line in proc.stdout:
        if "listening on http://" in line:
            url = line.split("listening on ")[1].split()[0]
            break
    # keep reading its stdout so that the server never blocks on a full pipe
    threading.Thread(target=proc.stdout.read, daemon=True).start()
    if url is None:
        raise UserInputError(f"dualpath serve did not start (exit {proc.poll()})")
    while time.perf_counter() - start < timeout_s:
        try:
            with urllib.request.urlopen(url + "/ready", timeout=5) as resp:
                if resp.status == 200:
                    return url
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.05)
    raise UserInputError(f"dualpath serve was not ready within {timeout_s} s")


def _tree_rss_bytes(pid: int) -> int:
    import psutil

    root = psutil.Process(pid)
    total = 0
    for p in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


async def _agents(url: str, chunks: list[list[list[int]]],
                  config: EngineBenchConfig) -> dict[str, Any]:
    import aiohttp

    n_out = config.shape.output_tokens
    ttft: list[float] = []
    tpot: list[float] = []
    tokens = 0
    timeout = aiohttp.ClientTimeout(total=None, sock_read=config.turn_timeout_s)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def agent(turns: list[list[int]]) -> None:
            nonlocal tokens
            context: list[int] = []
            for chunk in turns:
                context += chunk
                first_s, gaps, ids = await _turn(session, url, context, n_out)
                ttft.append(first_s)
                if gaps is not None:
                    tpot.append(gaps)
                tokens += len(ids)
                context += ids

        start = time.perf_counter()
        await asyncio.gather(*(agent(t) for t in chunks))
        wall_s = time.perf_counter() - start
    return {"system": "dualpath", "agents": len(chunks), "turns_done": len(ttft),
            "ttft_s_p50": percentile(ttft, 50), "tpot_s_p50": percentile(tpot, 50),
            "output_tok_s": tokens / wall_s, "wall_s": wall_s}


async def _turn(session: Any, url: str, prompt: list[int],
                n_out: int) -> tuple[float, float | None, list[int]]:
    body = {"prompt": prompt, "max_tokens": n_out, "min_tokens": n_out, "ignore_eos": True,
            "temperature": 0, "stream": True, "return_token_ids": True}
    t0 = time.perf_counter()
    first_s: float | None = None
    last_s = t0
    ids: list[int] = []
    async with session.post(url + "/v1/completions", json=body) as resp:
        if resp.status != 200:
            raise UserInputError(f"server answered {resp.status}: {await resp.text()}")
        async for chunk in sse_json(resp):
            if "error" in chunk:
                raise UserInputError(f"stream failed: {chunk['error']}")
            for choice in chunk.get("choices", ()):
                new = choice.get("token_ids") or ()
                if new:
                    now = time.perf_counter()
                    first_s = now if first_s is None else first_s
                    last_s = now
                    ids.extend(new)
    ttft = (first_s if first_s is not None else last_s) - t0
    gap = (last_s - first_s) / (len(ids) - 1) if first_s is not None and len(ids) > 1 else None
    return ttft, gap, ids


def table(result: dict[str, Any]) -> str:
    rows = [[r["system"], r.get("agents", "-"), r.get("ttft_s_p50"), r.get("tpot_s_p50"),
             r.get("output_tok_s"), (r.get("rss_bytes") or 0) / 2**30, r.get("error", "")[:60]]
            for r in result["runs"]]
    return (format_table(["system", "agents", "ttft_s_p50", "tpot_s_p50", "out_tok_s",
                          "rss_GiB", "error"], rows)
            + f"\nstartup_s {result['startup_s']:.1f}  tpot_over_transformers "
              f"{result['tpot_over_transformers']}")
