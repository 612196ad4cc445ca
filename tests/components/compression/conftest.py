"""Fixtures for the compression tests; the helpers live in ``compression_fixtures`` (a uniquely
named module, since several test folders have a ``conftest``)."""

from __future__ import annotations

import pytest
import torch
from compression_fixtures import make_batches, tiny_llama
from transformers import LlamaForCausalLM


@pytest.fixture
def model() -> LlamaForCausalLM:
    return tiny_llama()


@pytest.fixture
def batches() -> list[dict[str, torch.Tensor]]:
    return make_batches()
