"""The model identity both the router and the connectors hash blocks under.

It is `ModelConfig.identity` of the Hugging Face directory vLLM serves, as OUR loader reads
it (`dualpath.model.hf_loader.config_from_hf`: architecture + weights digest + KV dtype), so
`dualpath serve --model DIR --dtype D` and vLLM serving DIR in dtype D name (and share) the
same blocks, and two models never do.
"""

from __future__ import annotations

from pathlib import Path

from dualpath.core.errors import ModelLoadError
from dualpath.core.model_config import ModelConfig
from dualpath.kv.layout import BlockGeometry


def model_config(model_dir: str | Path, kv_dtype: str) -> ModelConfig:
    """Our `ModelConfig` of the HF checkpoint at `model_dir` (no weights are read)."""
    from dualpath.model.hf_loader import config_from_hf

    directory = Path(model_dir)
    files = sorted(directory.glob("*.safetensors"))
    if not directory.is_dir() or not files:
        raise ModelLoadError(f"{directory}: not a Hugging Face directory with *.safetensors "
                             "(the DualPath connector needs a local model directory)")
    return config_from_hf(directory, kv_dtype, files)


def geometry_of(cfg: ModelConfig, block_tokens: int) -> BlockGeometry:
    return BlockGeometry.from_model_config(cfg, block_tokens)
