"""Our top-level ``kernels`` package must never be mistaken for Hugging Face's hub ``kernels``."""

from pathlib import Path


def test_transformers_does_not_detect_hub_kernels():
    from transformers.utils import import_utils

    import kernels

    assert Path(kernels.__file__).parent.parent == Path(__file__).resolve().parents[2]
    import_utils.is_kernels_available.cache_clear() if hasattr(import_utils.is_kernels_available, "cache_clear") else None
    assert import_utils.is_kernels_available() is False
    assert not hasattr(kernels, "get_kernel")


def test_model_forward_works_with_our_kernels_on_path(tiny_model_dir):
    import torch

    from components.models import load_model

    model = load_model(tiny_model_dir)
    out = model(input_ids=torch.tensor([[1, 5, 7]]))
    assert out.logits.shape[:2] == (1, 3)
