"""`dualpath generate "question"`: run the model on one prompt, optionally through the KV store.

With `--store DIR` the prompt's leading full blocks are looked up in the file KV store (chained
block hashes, contract 2); the hit blocks' KV is streamed into prefill layer by layer
(`get_layer`, one Layer Block per block per layer, read just before that layer runs), only the
remaining tokens are computed, and afterwards every full block of prompt + answer that the store
lacks is persisted. Heavy imports (torch) happen inside `run`.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING, Any

from dualpath.core.errors import StoreError, UserInputError

if TYPE_CHECKING:
    import torch

    from dualpath.kv import KVStore
    from dualpath.model.kv_sequence import DenseKV
    from dualpath.model.transformer import Transformer


def register(sub: Any) -> None:
    p = sub.add_parser(
        "generate", help="generate a completion for one prompt (optionally via the KV store)",
        description="Generate a completion with the built-in PyTorch model.",
    )
    p.add_argument("prompt", help="the prompt (a user message when the chat template applies)")
    p.add_argument("--model", default="smollm2",
                   help="smollm2 (default), a random preset (tiny, tiny-mha, tiny-qwen2, "
                        "tiny-llama3, small), a Hugging Face checkpoint dir or a .gguf file")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--chat", dest="chat", action="store_true", default=None,
                      help="wrap the prompt in the chat template (default when the model has one)")
    mode.add_argument("--raw", dest="chat", action="store_false",
                      help="feed the prompt text as is")
    p.add_argument("--system", default=None, help="system message for --chat")
    p.add_argument("--max-tokens", type=int, default=128, help="generated tokens at most (128)")
    p.add_argument("--temperature", type=float, default=0.0,
                   help="0 = greedy (default); >0 samples")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1.0)")
    p.add_argument("--seed", type=int, default=0,
                   help="sampling seed, and weight seed of random presets (0)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="weights and KV dtype (float32)")
    p.add_argument("--quantization", default="none", choices=["none", "int8", "int4"],
                   help="weight-only quantized linear layers (none)")
    p.add_argument("--store", metavar="DIR", default=None,
                   help="KV file store: load the prompt's cached prefix, persist new full blocks")
    p.add_argument("--block-size", type=int, default=64, help="tokens per KV block (64)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: torch's choice, one per core)")
    p.add_argument("--verbose", "-v", action="store_true",
                   help="report prompt tokens, store hits and timings on stderr")
    p.add_argument("--json", metavar="PATH", help="write the result object to PATH")
    p.set_defaults(func=run)


class _StoreMiss(Exception):
    """A block vanished or was corrupt between lookup and read: recompute instead."""


def _store_source(store: KVStore, hashes: list[str], model: Transformer) -> Any:
    import numpy as np

    from dualpath.model.kv_bytes import kv_from_bytes

    def source(layer: int) -> torch.Tensor:
        parts = []
        for h in hashes:
            block = store.get_layer(h, layer)
            if block is None:
                raise _StoreMiss(h)
            parts.append(block[0])
        return kv_from_bytes(np.concatenate(parts, axis=0), model.config)

    return source


def _persist(store: KVStore, kv: DenseKV, token_ids: list[int], block_size: int,
             identity: str) -> int:
    """Put every full block of `token_ids` (whose KV is in `kv`) that the store lacks."""
    from dualpath.kv import block_hashes
    from dualpath.model.kv_bytes import layers_to_full_block

    hashes = block_hashes(token_ids[: kv.num_tokens], block_size, identity)
    written = 0
    for j, (h, present) in enumerate(zip(hashes, store.contains_many(hashes), strict=True)):
        if present:
            continue
        lo, hi = j * block_size, (j + 1) * block_size
        layers = [kv.layer_kv(layer)[lo:hi] for layer in range(kv.config.num_layers)]
        store.put(h, layers_to_full_block(layers))
        written += 1
    return written


def run(args: argparse.Namespace) -> int:
    from dualpath.model.detokenizer import IncrementalDetokenizer
    from dualpath.model.generation import generate
    from dualpath.model.loader import load_model

    if args.max_tokens < 1:
        raise UserInputError(f"--max-tokens must be >= 1, got {args.max_tokens}")
    if args.block_size < 1:
        raise UserInputError(f"--block-size must be >= 1, got {args.block_size}")
    if args.threads is not None:
        if args.threads < 1:
            raise UserInputError(f"--threads must be >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model, tokenizer = load_model(args.model, dtype=args.dtype, seed=args.seed,
                                  quantization=args.quantization)
    load_s = time.perf_counter() - t0
    chat = args.chat if args.chat is not None else tokenizer.chat_template is not None
    if chat:
        messages = ([{"role": "system", "content": args.system}] if args.system else [])
        messages.append({"role": "user", "content": args.prompt})
        prompt_ids = tokenizer.encode_chat(messages)
    else:
        prompt_ids = tokenizer.encode_prompt(args.prompt)
    if not prompt_ids:
        raise UserInputError("the prompt is empty")

    store = None
    hit_hashes: list[str] = []
    identity = model.config.identity
    if args.store:
        from dualpath.kv import BlockGeometry, FileKVStore, block_hashes

        store = FileKVStore(args.store, BlockGeometry.from_model_config(model.config,
                                                                        args.block_size))
        hashes = block_hashes(prompt_ids, args.block_size, identity)
        hits = store.longest_prefix(hashes)
        # leave at least one prompt token to compute: it yields the first token's logits
        hits = min(hits, (len(prompt_ids) - 1) // args.block_size)
        hit_hashes = hashes[:hits]

    detok = IncrementalDetokenizer(tokenizer)

    def on_token(token: int) -> None:
        piece = detok.push(token)
        if piece:
            print(piece, end="", flush=True)

    t1 = time.perf_counter()
    kwargs: dict[str, Any] = dict(
        max_tokens=args.max_tokens, eos_token_ids=tokenizer.eos_token_ids,
        temperature=args.temperature, top_p=args.top_p, seed=args.seed, on_token=on_token,
    )
    cached_tokens = len(hit_hashes) * args.block_size
    try:
        if store is not None and hit_hashes:
            result = generate(model, prompt_ids, past=_store_source(store, hit_hashes, model),
                              past_tokens=cached_tokens, **kwargs)
        else:
            result = generate(model, prompt_ids, **kwargs)
    except (_StoreMiss, StoreError) as exc:
        print(f"(store read failed: {exc}; recomputing)", file=sys.stderr)
        detok = IncrementalDetokenizer(tokenizer)
        cached_tokens = 0
        result = generate(model, prompt_ids, **kwargs)
    gen_s = time.perf_counter() - t1
    tail = detok.flush()
    print(tail)
    written = 0
    if store is not None:
        written = _persist(store, result.kv, prompt_ids + result.token_ids, args.block_size,
                           identity)
    text = tokenizer.decode(result.token_ids)
    summary = {
        "model": model.config.name,
        "weights_id": model.config.weights_id,
        "model_identity": identity,
        "chat": chat,
        "text": text,
        "token_ids": result.token_ids,
        "finish_reason": result.finish_reason,
        "prompt_tokens": len(prompt_ids),
        "cached_tokens": cached_tokens,
        "completion_tokens": len(result.token_ids),
        "blocks_written": written,
        "load_s": load_s,
        "generate_s": gen_s,
    }
    if args.verbose:
        print(
            f"prompt tokens: {len(prompt_ids)} ({cached_tokens} from the KV store, "
            f"{len(prompt_ids) - cached_tokens} computed); completion tokens: "
            f"{len(result.token_ids)} ({result.finish_reason}); blocks written: {written}; "
            f"load {load_s:.2f} s, generate {gen_s:.2f} s",
            file=sys.stderr,
        )
    if args.json:
        from dualpath.bench.report import write_json

        write_json(args.json, summary)
    return 0
