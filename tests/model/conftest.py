"""Shared fixtures for model tests: small random models (no files needed)."""

from __future__ import annotations

import pytest
import torch

from dualpath.model.loader import load_model
from dualpath.model.tokenizer import Tokenizer
from dualpath.model.transformer import Transformer

# Tiny models gain nothing from threads, and on a shared 2-core machine OpenMP spinning makes
# them 10x slower.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny() -> tuple[Transformer, Tokenizer]:
    return load_model("tiny", seed=1)
