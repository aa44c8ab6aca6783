"""load_model: presets, identities, errors; `dualpath generate` end to end on a preset."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dualpath.cli.main import main
from dualpath.core.errors import UserInputError
from dualpath.model.loader import load_model
from dualpath.model.threads import set_torch_threads, torch_threads


def test_unknown_spec_lists_choices() -> None:
    with pytest.raises(UserInputError, match="smollm2, tiny"):
        load_model("no-such-model")


def test_presets_are_seeded() -> None:
    a, _ = load_model("tiny", seed=1)
    b, _ = load_model("tiny", seed=1)
    c, _ = load_model("tiny", seed=2)
    assert a.config.weights_id == "random-seed-1"
    assert a.config.identity == b.config.identity != c.config.identity
    assert torch.equal(a.embed_tokens.weight, b.embed_tokens.weight)
    assert not torch.equal(a.embed_tokens.weight, c.embed_tokens.weight)


def test_bfloat16_model_runs_with_bfloat16_kv() -> None:
    model, _ = load_model("tiny", dtype="bfloat16", seed=1)
    out = model.prefill([1, 2, 3])
    assert out.new_kv[0].dtype == torch.bfloat16
    assert model.config.kv_bytes_per_token_per_layer == 2 * 2 * 16 * 2
    ref, _ = load_model("tiny", seed=1)
    assert model.config.identity != ref.config.identity


def test_generate_cli_with_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "store"
    prompt = "a question long enough to fill several blocks of sixteen tokens each"
    argv = ["generate", "--model", "tiny", prompt, "--max-tokens", "20", "--store", str(store),
            "--block-size", "16", "-v"]
    assert main([*argv, "--json", str(tmp_path / "1.json")]) == 0
    first = json.loads((tmp_path / "1.json").read_text())
    assert main([*argv, "--json", str(tmp_path / "2.json")]) == 0
    second = json.loads((tmp_path / "2.json").read_text())
    err = capsys.readouterr().err
    assert first["cached_tokens"] == 0 and first["blocks_written"] > 0
    n_prompt = first["prompt_tokens"]
    assert second["cached_tokens"] == (n_prompt - 1) // 16 * 16 > 0
    assert f"({second['cached_tokens']} from the KV store" in err
    assert second["token_ids"] == first["token_ids"]
    assert second["text"] == first["text"]
    assert first["chat"] is False  # presets have no chat template of their own


def test_generate_cli_rejects_bad_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["generate", "--model", "nope", "hi"]) == 2
    assert "unknown model" in capsys.readouterr().err
    assert main(["generate", "--model", "tiny", "hi", "--max-tokens", "0"]) == 2


def test_config_and_tokenizer_load_without_torch() -> None:
    """The scheduler process reads the config and tokenizer only: no torch, no weights."""
    code = ("import sys\n"
            "from dualpath.model.source import load_config_and_tokenizer\n"
            "config, tok = load_config_and_tokenizer('tiny', quantization='int4')\n"
            "assert config.weights_id == 'random-seed-0+int4', config.weights_id\n"
            "assert tok.vocab_size == config.vocab_size\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_set_torch_threads() -> None:
    before = torch.get_num_threads()
    try:
        assert set_torch_threads(2) == before
        assert torch_threads() == 2
        assert set_torch_threads(1) == 2
    finally:
        torch.set_num_threads(before)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(UserInputError):
            set_torch_threads(bad)  # type: ignore[arg-type]
