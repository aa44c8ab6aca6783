"""Loading a Hugging Face checkpoint directory (config.json, *.safetensors, tokenizer.json).

Llama-family `model_type`s only (llama, qwen2, mistral without sliding window); the tokenizer
comes from tokenizer.json, the chat template and special tokens from tokenizer_config.json (or
chat_template.jinja), extra EOS ids from generation_config.json.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dualpath.core.errors import ModelLoadError
from dualpath.core.model_config import ModelConfig
from dualpath.model.digest import file_digest
from dualpath.model.tokenizer import BPETokenizer

if TYPE_CHECKING:  # torch only for annotations: the config/tokenizer path stays torch-free
    import torch

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "mistral")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path}: expected a JSON object")
    return data


def _ids(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, list):
        return tuple(int(v) for v in value)
    return (int(value),)


def _rope(cfg: dict[str, Any]) -> tuple[float, tuple[tuple[str, float | str], ...] | None]:
    params = dict(cfg.get("rope_parameters") or {})
    scaling = dict(cfg.get("rope_scaling") or {})
    theta = float(cfg.get("rope_theta") or params.get("rope_theta") or 10000.0)
    merged = {**params, **scaling}
    merged.pop("rope_theta", None)
    kind = merged.pop("rope_type", merged.pop("type", "default"))
    if kind in ("default", None):
        return theta, None
    items = [(k, v if isinstance(v, str) else float(v)) for k, v in merged.items()
             if isinstance(v, str | int | float)]
    return theta, tuple(sorted([*items, ("rope_type", str(kind))]))


def config_from_hf(directory: Path, kv_dtype: str, weight_files: list[Path]) -> ModelConfig:
    cfg = _read_json(directory / "config.json")
    model_type = cfg.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ModelLoadError(f"{directory}: model_type {model_type!r} not supported "
                             f"({', '.join(SUPPORTED_MODEL_TYPES)})")
    if model_type == "mistral" and cfg.get("sliding_window"):
        raise ModelLoadError(f"{directory}: sliding-window attention is not supported")
    gen_path = directory / "generation_config.json"
    gen = _read_json(gen_path) if gen_path.exists() else {}
    eos = tuple(dict.fromkeys(_ids(cfg.get("eos_token_id")) + _ids(gen.get("eos_token_id"))))
    heads = int(cfg["num_attention_heads"])
    theta, scaling = _rope(cfg)
    return ModelConfig(
        name=str(cfg.get("_name_or_path") or directory.name),
        vocab_size=int(cfg["vocab_size"]),
        hidden_size=int(cfg["hidden_size"]),
        intermediate_size=int(cfg["intermediate_size"]),
        num_layers=int(cfg["num_hidden_layers"]),
        num_heads=heads,
        num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
        head_dim=int(cfg.get("head_dim") or int(cfg["hidden_size"]) // heads),
        max_position_embeddings=int(cfg.get("max_position_embeddings", 4096)),
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        rope_theta=theta,
        rope_scaling=scaling,
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        attention_bias=bool(cfg.get("attention_bias", model_type == "qwen2")),
        kv_dtype=kv_dtype,
        bos_token_id=_ids(cfg.get("bos_token_id"))[0] if cfg.get("bos_token_id") is not None else None,
        eos_token_ids=eos,
        weights_id=file_digest(weight_files, "safetensors"),
        extra=(("source", "hf"), ("model_type", str(model_type))),
    )


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):
        return str(value.get("content"))
    return None if value is None else str(value)


def tokenizer_from_hf(directory: Path, eos_ids: tuple[int, ...]) -> BPETokenizer:
    from tokenizers import Tokenizer as RustTokenizer

    path = directory / "tokenizer.json"
    if not path.exists():
        raise ModelLoadError(f"{directory}: no tokenizer.json")
    inner = RustTokenizer.from_file(str(path))
    tcfg_path = directory / "tokenizer_config.json"
    tcfg = _read_json(tcfg_path) if tcfg_path.exists() else {}
    template = tcfg.get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    jinja_file = directory / "chat_template.jinja"
    if template is None and jinja_file.exists():
        template = jinja_file.read_text()
    eos_text = _token_text(tcfg.get("eos_token"))
    ids = list(eos_ids)
    if eos_text is not None:
        eos_id = inner.token_to_id(eos_text)
        if eos_id is not None and eos_id not in ids:
            ids.append(eos_id)
    return BPETokenizer(inner, chat_template=template, eos_token_ids=ids,
                        bos_token=_token_text(tcfg.get("bos_token")), eos_token=eos_text,
                        add_bos_token=bool(tcfg.get("add_bos_token", False)))


def _weight_files(directory: Path) -> list[Path]:
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{directory}: no *.safetensors files")
    return files


def hf_config_and_tokenizer(directory: Path, kv_dtype: str) -> tuple[ModelConfig, BPETokenizer]:
    """Config and tokenizer of a checkpoint directory; no tensor is loaded."""
    config = config_from_hf(directory, kv_dtype, _weight_files(directory))
    tokenizer = tokenizer_from_hf(directory, config.eos_token_ids)
    if tuple(tokenizer.eos_token_ids) != config.eos_token_ids:
        from dataclasses import replace

        config = replace(config, eos_token_ids=tuple(tokenizer.eos_token_ids))
    return config, tokenizer


def read_hf_dir(directory: Path, kv_dtype: str
                ) -> tuple[ModelConfig, Iterator[tuple[str, torch.Tensor]], BPETokenizer]:
    """Config, a one-pass iterator of HF-named tensors (read one at a time), and tokenizer."""
    config, tokenizer = hf_config_and_tokenizer(directory, kv_dtype)
    return config, _tensors(_weight_files(directory)), tokenizer


def _tensors(files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    from safetensors import SafetensorError, safe_open

    for f in files:
        try:
            with safe_open(str(f), framework="pt") as handle:
                for name in handle.keys():  # noqa: SIM118 (a safetensors handle, not a dict)
                    yield name, handle.get_tensor(name)
        except (OSError, ValueError, SafetensorError) as exc:
            raise ModelLoadError(f"cannot read {f}: {exc}") from exc


def load_hf_dir(directory: Path, kv_dtype: str
                ) -> tuple[ModelConfig, dict[str, torch.Tensor], BPETokenizer]:
    """Config, HF-named tensors (all at once) and tokenizer of a checkpoint directory."""
    config, tensors, tokenizer = read_hf_dir(directory, kv_dtype)
    return config, dict(tensors), tokenizer
