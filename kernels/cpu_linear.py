"""fp32 linear layers through oneDNN on the CPU, for the engine's no-grad forwards.

``torch.nn.functional.linear`` on a CPU float32 tensor calls MKL's sgemm. On a CPU that is not
Intel's (these machines are AMD EPYC with AVX-512), MKL takes its generic code path, while
oneDNN, which PyTorch ships too, detects the AVX-512 kernels. Same fp32 arithmetic, another
summation order: on SmolLM2-135M's shapes at batch 64 oneDNN is measured faster than MKL in the
same run (``tests/bench/bench_engine.py`` reports both; README, Performance). Its results differ
from MKL's by float rounding only (checked against a float64 product in the tests) and do not
depend on the thread count.

* ``linear_reference``: ``torch.nn.functional.linear``, the ground truth for tests.
* ``onednn_linear``: the same product through ``torch.ops.mkldnn._linear_pointwise`` (dense
  tensors in and out: the op PyTorch's own CPU compiler emits for linear layers).
* ``onednn_linears(model)``: within the block, the model's ``nn.Linear`` layers run through
  ``onednn_linear`` whenever autograd is off (``torch.no_grad`` / ``inference_mode``) and the
  layer is a float32 CPU one; with autograd on they keep ``F.linear`` (the oneDNN op has no
  backward), so a trainer using the same model object at the same time is unaffected.
  Layers smaller than ``MIN_WEIGHT_NUMEL`` keep ``F.linear``: for them oneDNN's per-call set-up
  costs more than the product (a 64-wide test model decoded 0.46x as fast through oneDNN).
  ``POSTTRAIN_ONEDNN_LINEAR=0`` turns it off.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["linear_reference", "onednn_linear", "onednn_available", "onednn_linears"]

MIN_WEIGHT_NUMEL = 1 << 16  # SmolLM2-135M's smallest projection (576 x 192) is 110,592


def linear_reference(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    return F.linear(x, weight, bias)


def onednn_available() -> bool:
    """oneDNN's CPU linear can run here (and is not switched off by the setting)."""
    if os.environ.get("POSTTRAIN_ONEDNN_LINEAR", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    return bool(torch.backends.mkldnn.is_available()) and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def onednn_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``x @ weight.T + bias`` through oneDNN; float32 CPU tensors, no autograd."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def _usable(layer: torch.nn.Linear) -> bool:
    w = layer.weight
    return w.device.type == "cpu" and w.dtype == torch.float32 and not w.is_sparse and w.numel() >= MIN_WEIGHT_NUMEL


def _forward_for(layer: torch.nn.Linear, packed: Tensor | None) -> Any:
    def forward(x: Tensor) -> Tensor:
        if torch.is_grad_enabled() or x.dtype != torch.float32 or x.device.type != "cpu":
            return F.linear(x, layer.weight, layer.bias)
        return onednn_linear(x, layer.weight if packed is None else packed, layer.bias)
    return forward


@contextlib.contextmanager
def onednn_linears(model: torch.nn.Module, batch_hint: int | None = None) -> Iterator[int]:
    """Route the model's float32 CPU ``nn.Linear`` layers through oneDNN for no-grad calls inside
    the block; yields how many layers were routed (0 when oneDNN is unavailable or switched off).
    A layer that already has its own ``forward`` attribute (another patch) is left alone.

    ``batch_hint``: prepack each weight once for oneDNN's kernels at about that many rows (a
    copy of the weights for the block's lifetime, so the weights must not change inside it)."""
    layers = [m for m in model.modules()
              if type(m) is torch.nn.Linear and "forward" not in m.__dict__ and _usable(m)] if onednn_available() else []
    for m in layers:
        with torch.no_grad():
            packed = torch.ops.mkldnn._reorder_linear_weight(m.weight.detach(), batch_hint) if batch_hint else None
        m.forward = _forward_for(m, packed)  # type: ignore[method-assign]
    try:
        yield len(layers)
    finally:
        for m in layers:
            m.__dict__.pop("forward", None)
