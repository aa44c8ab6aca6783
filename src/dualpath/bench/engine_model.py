"""The bare model's speed and memory per execution mode, against Hugging Face transformers.

For each system — `dualpath` in every (dtype, quantization) asked for, `transformers` fp32
loading the same GGUF (the reference peer) and, when a Python with `llama_cpp` is given,
llama.cpp on the same GGUF — a fresh process loads the model and runs the same agent workload
(`model_workers.py`: agents in lockstep, 5 turns of growing context, whole-prompt prefill,
greedy decode) at batch 1 and 4. Systems run one after another in one run, so they share the
machine's load; the JSON keeps each system's load time, weight bytes, RSS (loaded, end, peak),
and per batch TPOT p50 / mean, output tok/s, prefill per turn and greedy tokens of agent 0.
`tpot_over_transformers` is ours ÷ transformers' TPOT p50 at batch 1 per mode.

`run_model_bench(ModelBenchConfig(...))` returns the result dict (reusable by `dualpath bench
engine`); `add_arguments` / `run` plug it into `dualpath bench` like the other benchmarks.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dualpath.bench.report import format_table, machine_info, parse_modes
from dualpath.core.errors import UserInputError

log = logging.getLogger(__name__)

DEFAULT_MODES: tuple[tuple[str, str], ...] = (
    ("float32", "none"), ("bfloat16", "none"), ("float32", "int8"), ("bfloat16", "int8"),
    ("float32", "int4"), ("bfloat16", "int4"))
# Agent-flavoured text (tool output, code, prose) cycled into prompts; content barely matters
# for speed, but real tokens keep activations realistic.
_TEXT = """Tool result (exit code 0):
$ pytest -q tests/test_parser.py
..F.
FAILED tests/test_parser.py::test_nested_lists - AssertionError: expected ['a', ['b', 'c']]
def parse(tokens):
    stack = [[]]
    for tok in tokens:
        if tok == "[":
            stack.append([])
        elif tok == "]":
            done = stack.pop()
            stack[-1].append(done)
        else:
            stack[-1].append(tok)
    return stack[0]
The user asked to fix the failing test without changing the public interface. The parser
must accept nested brackets, report unbalanced input with a clear error, and keep the
existing behaviour for flat lists. Next, run the whole suite and summarise what changed.
"""


@dataclass(frozen=True)
class AgentShape:
    """The workload: turn 0's prompt, then each turn adds the last answer and a new chunk."""

    turns: int = 5
    first_prompt_tokens: int = 256
    append_tokens: int = 128
    output_tokens: int = 32

    def __post_init__(self) -> None:
        if min(self.turns, self.first_prompt_tokens, self.output_tokens) < 1 or \
                self.append_tokens < 0 or self.output_tokens < 2:
            raise UserInputError(f"bad agent shape {self}")

    def prompt_tokens(self, turn: int) -> int:
        return self.first_prompt_tokens + turn * (self.append_tokens + self.output_tokens)


@dataclass(frozen=True)
class ModelBenchConfig:
    model: str = "smollm2"
    modes: tuple[tuple[str, str], ...] = DEFAULT_MODES
    transformers: bool = True
    llama_cpp_python: str | None = None  # a Python that can `import llama_cpp`
    batch_sizes: tuple[int, ...] = (1, 4)
    shape: AgentShape = field(default_factory=AgentShape)
    threads: int = 1
    timeout_s: float = 3600.0


def agent_chunks(token_stream: list[int], shape: AgentShape, agents: int) -> list[list[list[int]]]:
    """[agent][turn] -> the turn's new tokens (turn 0: the whole first prompt), each agent
    reading the cyclic stream from its own offset."""
    out = []
    for a in range(agents):
        pos = 97 * a
        turns = []
        for t in range(shape.turns):
            n = shape.first_prompt_tokens if t == 0 else shape.append_tokens
            turns.append([token_stream[(pos + i) % len(token_stream)] for i in range(n)])
            pos += n
        out.append(turns)
    return out


def _run_worker(cmd: list[str], spec: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="dualpath-model-bench-") as tmp:
        spec_path, out_path = Path(tmp, "spec.json"), Path(tmp, "out.json")
        spec_path.write_text(json.dumps(spec))
        proc = subprocess.run([*cmd, str(spec_path), str(out_path)], capture_output=True,
                              text=True, timeout=timeout_s, check=False)
        if proc.returncode != 0 or not out_path.exists():
            return {"error": f"exit {proc.returncode}: {(proc.stderr or proc.stdout)[-2000:]}"}
        result: dict[str, Any] = json.loads(out_path.read_text())
        return result


def run_model_bench(config: ModelBenchConfig) -> dict[str, Any]:
    from dualpath.model.source import load_config_and_tokenizer, model_source

    model_config, tokenizer = load_config_and_tokenizer(config.model)
    stream = tokenizer.encode(_TEXT)
    chunks = agent_chunks(stream, config.shape, max(config.batch_sizes))
    base = {"model": config.model, "batch_sizes": list(config.batch_sizes),
            "output_tokens": config.shape.output_tokens, "threads": config.threads,
            "chunks": chunks}
    jobs: list[tuple[str, list[str], dict[str, Any]]] = []
    worker = [sys.executable, "-m", "dualpath.bench.model_workers"]
    for dtype, quantization in config.modes:
        jobs.append((f"dualpath {dtype} {quantization}", worker,
                     {**base, "system": "dualpath", "dtype": dtype, "quantization": quantization}))
    kind, path = model_source(config.model)
    if config.transformers and kind == "gguf":
        jobs.append(("transformers float32", worker, {**base, "system": "transformers",
                                                      "dtype": "float32", "quantization": "none",
                                                      "gguf_path": str(path)}))
    if config.llama_cpp_python and kind == "gguf":
        peer = str(Path(__file__).with_name("llama_cpp_peer.py"))
        jobs.append(("llama.cpp", [config.llama_cpp_python, peer],
                     {**base, "system": "llama.cpp", "dtype": "gguf", "quantization": "gguf",
                      "gguf_path": str(path), "batch_sizes": [1]}))
    systems = []
    for label, cmd, spec in jobs:
        log.info("model bench: %s", label)
        result = _run_worker(cmd, spec, config.timeout_s)
        systems.append({"system": spec["system"], "dtype": spec["dtype"],
                        "quantization": spec["quantization"], "label": label, **result})
    return {
        "benchmark": "engine-model",
        "model": config.model,
        "weights_id": model_config.weights_id,
        "workload": {**asdict(config.shape), "agents": list(config.batch_sizes),
                     "prompt_tokens_per_turn": [config.shape.prompt_tokens(t)
                                                for t in range(config.shape.turns)]},
        "threads": config.threads,
        "systems": systems,
        "tpot_over_transformers": _ratios(systems),
        "machine": machine_info(),
    }


def _tpot(system: dict[str, Any], batch: int) -> float | None:
    for r in system.get("runs", []):
        if r["batch"] == batch:
            return float(r["tpot_s_p50"])
    return None


def _ratios(systems: list[dict[str, Any]]) -> dict[str, float]:
    ref = next((s for s in systems if s["system"] == "transformers"), None)
    ref_tpot = _tpot(ref, 1) if ref else None
    if not ref_tpot:
        return {}
    out = {}
    for s in systems:
        ours = _tpot(s, 1)
        if s["system"] != "transformers" and ours is not None:
            out[s["label"]] = ours / ref_tpot
    return out


def table(result: dict[str, Any]) -> str:
    rows = []
    for s in result["systems"]:
        for r in s.get("runs", []):
            rows.append([s["label"], r["batch"], r["tpot_s_p50"] * 1e3, r["output_tok_s"],
                         sum(r["prefill_s_per_turn"]) / len(r["prefill_s_per_turn"]),
                         s["load_s"], s["weight_bytes"] / 2**20, s["rss_bytes"] / 2**20])
        if "error" in s:
            rows.append([s["label"], "-", "error", s["error"].strip().splitlines()[-1][:60], "",
                         "", "", ""])
    return format_table(["system", "batch", "tpot_ms_p50", "out_tok_s", "prefill_s_mean",
                         "load_s", "weights_MiB", "rss_MiB"], rows)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--modes", default=",".join(f"{d}:{q}" for d, q in DEFAULT_MODES),
                        help="comma-separated dtype:quantization pairs")
    parser.add_argument("--no-transformers", action="store_true",
                        help="skip the Hugging Face transformers reference")
    parser.add_argument("--llama-cpp-python", default=None,
                        help="a Python interpreter with llama_cpp installed (adds llama.cpp)")
    parser.add_argument("--batch-sizes", default="1,4")
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--first-prompt-tokens", type=int, default=256)
    parser.add_argument("--append-tokens", type=int, default=128)
    parser.add_argument("--output-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)


def run(args: argparse.Namespace) -> dict[str, Any]:
    try:
        modes = tuple(parse_modes(args.modes))
        batches = tuple(int(b) for b in args.batch_sizes.split(","))
    except (IndexError, ValueError) as exc:
        raise UserInputError(f"bad --modes or --batch-sizes: {exc}") from None
    config = ModelBenchConfig(
        model=args.model, modes=modes, transformers=not args.no_transformers,
        llama_cpp_python=args.llama_cpp_python, batch_sizes=batches, threads=args.threads,
        shape=AgentShape(args.turns, args.first_prompt_tokens, args.append_tokens,
                         args.output_tokens))
    result = run_model_bench(config)
    print(table(result))
    return result


if __name__ == "__main__":
    from dualpath.bench.report import write_json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--json", default=None)
    ns = parser.parse_args()
    out = run(ns)
    if ns.json:
        write_json(ns.json, out)
