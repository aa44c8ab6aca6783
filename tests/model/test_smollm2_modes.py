"""SmolLM2-135M-Instruct (Q4_1 GGUF) in bfloat16 / int8 / int4 against float32. Slow.

- int4 runs the file's own Q4_1 weights (to bfloat16 rounding of scale and zero);
- the config read without weights is the loaded model's, per mode;
- teacher-forced greedy agreement with float32's answers on six fixed chat prompts.
  Measured with `dualpath.bench.model_quality` (12 prompts, 48 tokens; results in
  benchmarks/results/model_quality.json): bfloat16 98.7%, int8 96.1-96.3%, int4 97.6-97.9%.
  The bounds below leave a few points for the smaller prompt set; a wrong scale, zero point,
  row permutation or KV path drops agreement to chance (well under 50%).
"""

from __future__ import annotations

import pytest

from dualpath.bench.model_quality import PROMPTS, quality
from dualpath.model.loader import load_model
from dualpath.model.quant import Int4Linear
from dualpath.model.source import load_config_and_tokenizer

pytestmark = pytest.mark.slow

MIN_TOP1 = {"bfloat16/none": 0.95, "bfloat16/int8": 0.92, "bfloat16/int4": 0.93}


def test_int4_runs_the_files_q4_weights_and_config_matches() -> None:
    ref, _ = load_model("smollm2")
    int4, _ = load_model("smollm2", dtype="bfloat16", quantization="int4")
    for name in ("self_attn.q_proj", "mlp.down_proj"):
        layer = int4.decoder_layers[7].get_submodule(name)
        assert isinstance(layer, Int4Linear)
        want = ref.decoder_layers[7].get_submodule(name).weight
        dense = layer.dense_weight()
        assert dense is not None
        assert float((dense.float() - want).abs().max()) <= 2.0 ** -7 * float(want.abs().max())
    config, _ = load_config_and_tokenizer("smollm2", dtype="bfloat16", quantization="int4")
    assert config == int4.config
    assert config.identity != ref.config.identity


def test_greedy_agreement_with_float32() -> None:
    result = quality("smollm2", [(k.split("/")[0], k.split("/")[1]) for k in MIN_TOP1],
                     prompts=PROMPTS[:6], max_tokens=32)
    for label, bound in MIN_TOP1.items():
        assert result["modes"][label]["top1_agreement"] >= bound, (label, result["modes"][label])
