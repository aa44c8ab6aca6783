"""One entry point for every model source: `load_model(spec) -> (Transformer, Tokenizer)`.

Specs are resolved by `source.py` ("smollm2", a random preset, a Hugging Face checkpoint
directory or a `.gguf` file; nothing is ever downloaded). Weights stream in one tensor at a
time and are converted (cast or quantized) as they arrive, so the model is never held twice.
For the config and tokenizer alone use `source.load_config_and_tokenizer` (no torch).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import time
from collections.abc import Iterator

from dualpath.model.execution import (
    Quantization,
    check_dtype,
    check_quantization,
    with_quantization,
)
from dualpath.model.presets import PRESETS, preset_config
from dualpath.model.quant import WeightValue
from dualpath.model.source import (  # noqa: F401 (re-exported for callers of this module)
    BUILTIN_CHOICES,
    SMOLLM2_FILE,
    checked_config,
    load_config_and_tokenizer,
    model_source,
    smollm2_path,
)
from dualpath.model.tokenizer import ByteTokenizer, Tokenizer
from dualpath.model.transformer import Transformer

log = logging.getLogger(__name__)


def release_freed_memory() -> None:
    """Give the heap pages freed by loading back to the OS.

    Dequantizing and quantizing tensor by tensor frees every float temporary, but glibc keeps
    freed heap pages mapped (measured: ~250 MB after an int8 SmolLM2 load); `malloc_trim`
    returns them. A no-op where there is no glibc.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def load_model(spec: str, *, dtype: str = "float32", seed: int = 0,
               quantization: Quantization | str = "none") -> tuple[Transformer, Tokenizer]:
    """Load a model and its tokenizer.

    `dtype` ("float32", "bfloat16", "float16") is the activations' and the KV's dtype (and the
    weights', unquantized). `quantization` "int8" / "int4" runs the linear layers on
    weight-only quantized CPU kernels (`quant.py`; GGUF Q4 weights are used as they are in
    int4); "none" (the default) keeps float weights. `seed` only matters for random presets.
    """
    check_dtype(dtype)
    mode = check_quantization(quantization)
    start_s = time.perf_counter()
    if spec in PRESETS:
        config = preset_config(spec, seed=seed, kv_dtype=dtype)
        model = Transformer(with_quantization(config, mode))
        model.init_random(seed)
        model.quantize(mode)
        release_freed_memory()
        return model, ByteTokenizer(config.vocab_size)
    kind, path = model_source(spec)
    tensors: Iterator[tuple[str, WeightValue]]
    tokenizer: Tokenizer
    if kind == "hf":
        from dualpath.model.hf_loader import read_hf_dir

        config, tensors, tokenizer = read_hf_dir(path, dtype)
    else:
        from dualpath.model.gguf_loader import read_gguf

        config, tensors, tokenizer = read_gguf(path, dtype, keep_quantized=mode != "none")
    model = Transformer(with_quantization(checked_config(spec, config, tokenizer), mode))
    model.load_weights(tensors, quantization=mode)
    release_freed_memory()
    log.info("loaded %s (%s, %s, %s) in %.1f s", spec, config.weights_id, dtype, mode,
             time.perf_counter() - start_s)
    return model, tokenizer
