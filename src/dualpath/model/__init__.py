"""The PyTorch decoder (Llama / Qwen2 / SmolLM2 family) used by the engines.

Submodules import torch; this package's top level does not, so `import dualpath.model` stays
cheap. Entry points: `dualpath.model.loader.load_model`, `dualpath.model.transformer.Transformer`,
`dualpath.model.kv_cache.PagedKVCache`, `dualpath.model.kv_bytes`.
"""
