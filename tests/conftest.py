"""Shared fixtures: a tiny random Llama checkpoint built locally (no downloads)."""

from __future__ import annotations

import os
from pathlib import Path

# Idle OpenMP threads sleep instead of spinning (set before torch loads; see README, Settings).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from components.models import build_tiny_model

    d = tmp_path_factory.mktemp("tiny-model")
    build_tiny_model(d, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64, seed=0)
    return d
