"""fp32 linear layers through oneDNN on the CPU, for the engine's no-grad forwards.

``torch.nn.functional.linear`` on a CPU float32 tensor calls MKL's sgemm. On a CPU that is not
Intel's (these machines are AMD EPYC with AVX-512), MKL takes its generic code path, while
oneDNN, which PyTorch ships too, detects the AVX-512 kernels. Same fp32 arithmetic, another
summation order: on SmolLM2-135M's shapes oneDNN is measured faster than MKL in the same run
(``tests/bench/bench_engine.py`` reports both; README, Performance). Its results differ from
MKL's by float rounding only (checked against a float64 product in the tests) and do not depend
on the thread count.

* ``linear_reference``: ``torch.nn.functional.linear``, the ground truth for tests.
* ``onednn_linear``: the same product through ``torch.ops.mkldnn._linear_pointwise`` (dense
  tensors in and out: the op PyTorch's own CPU compiler emits for linear layers).
* ``onednn_linears(batch_hint)``: within the block, on this thread, every ``F.linear`` call with
  autograd off (``torch.no_grad`` / ``inference_mode``) on float32 CPU tensors runs through
  ``onednn_linear``; with autograd on it stays ``F.linear`` (the oneDNN op has no backward).
  It is a ``TorchFunctionMode``, so no module is modified: libraries that inspect or rewrite a
  model's modules during its forward (compressed-tensors decompresses its layers on the first
  forward) see the model as it is, and another thread using the same model is unaffected.
  ``batch_hint``: each weight is packed for oneDNN's kernels at about that many rows on its
  first use in the block, and the packed copy is reused until the block ends or the weight
  changes in place. Layers smaller than ``MIN_WEIGHT_NUMEL`` keep ``F.linear``: for them
  oneDNN's per-call set-up costs more than the product (a 64-wide test model decoded 0.46x as
  fast through oneDNN). ``POSTTRAIN_ONEDNN_LINEAR=0`` turns it off.
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

__all__ = ["linear_reference", "onednn_linear", "onednn_available", "onednn_linears", "OneDNNLinearMode",
           "has_routable_linears"]

MIN_WEIGHT_NUMEL = 1 << 16  # SmolLM2-135M's smallest projection (576 x 192) is 110,592


def linear_reference(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    return F.linear(x, weight, bias)


_OFF, _ON = ("0", "false", "no", "off", "f", "n"), ("1", "true", "yes", "on", "t", "y", "")


def onednn_available() -> bool:
    """oneDNN's CPU linear can run here and ``POSTTRAIN_ONEDNN_LINEAR`` (the ``onednn_linear``
    setting, which ``components.settings`` validates and exports) does not switch it off."""
    flag = os.environ.get("POSTTRAIN_ONEDNN_LINEAR", "1").strip().lower()
    if flag not in _OFF + _ON:
        raise ValueError(f"POSTTRAIN_ONEDNN_LINEAR={flag!r}: expected 1/0, true/false, yes/no or on/off")
    if flag in _OFF:
        return False
    return bool(torch.backends.mkldnn.is_available()) and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def onednn_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``x @ weight.T + bias`` through oneDNN; float32 CPU tensors, no autograd. ``weight`` may be
    a dense tensor or one packed by ``torch.ops.mkldnn._reorder_linear_weight``."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def _plain_cpu_fp32(t: Tensor | None) -> bool:
    return t is None or (type(t) in (Tensor, torch.nn.Parameter) and t.device.type == "cpu"
                         and t.dtype == torch.float32 and t.layout == torch.strided)


def _version(t: Tensor) -> int:
    """In-place changes to ``t`` so far; -1 for an inference tensor (created under
    ``inference_mode``, e.g. a layer compressed-tensors decompressed there), which counts none."""
    try:
        return int(t._version)
    except RuntimeError:
        return -1


class OneDNNLinearMode(TorchFunctionMode):
    """Routes no-grad float32 CPU ``F.linear`` calls to oneDNN; ``calls`` counts them."""

    def __init__(self, batch_hint: int | None = None) -> None:
        super().__init__()
        self.batch_hint = batch_hint
        self.calls = 0
        self._packed: dict[int, tuple[Any, int, Tensor]] = {}  # id(weight) -> (weakref, version, packed)

    def _weight(self, w: Tensor) -> Tensor:
        if not self.batch_hint:
            return w
        version = _version(w)
        hit = self._packed.get(id(w))
        if hit is not None and hit[0]() is w and hit[1] == version:
            return hit[2]
        packed = torch.ops.mkldnn._reorder_linear_weight(w.detach(), self.batch_hint)
        self._packed[id(w)] = (weakref.ref(w), version, packed)
        return packed

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is F.linear and not torch.is_grad_enabled():
            x, w = args[0], args[1]
            b = args[2] if len(args) > 2 else kwargs.get("bias")
            if w.numel() >= MIN_WEIGHT_NUMEL and w.dim() == 2 and all(_plain_cpu_fp32(t) for t in (x, w, b)):
                self.calls += 1
                return onednn_linear(x, self._weight(w), b)
        return func(*args, **kwargs)


def has_routable_linears(model: torch.nn.Module) -> bool:
    """Whether the model has a float32 CPU linear layer the mode would route. A mode costs a
    Python call per torch op, which a model whose layers all stay on ``F.linear`` should not
    pay (a 64-wide test model decoded 0.77x as fast inside a mode that routed nothing)."""
    return any(isinstance(m, torch.nn.Linear) and m.weight.numel() >= MIN_WEIGHT_NUMEL
               and m.weight.device.type == "cpu" and m.weight.dtype == torch.float32 for m in model.modules())


_active = threading.local()


@contextlib.contextmanager
def onednn_linears(batch_hint: int | None = None) -> Iterator[OneDNNLinearMode | None]:
    """The block in which this thread's no-grad float32 CPU linears run through oneDNN; yields the
    mode (None when oneDNN is unavailable or switched off, or inside another such block, whose
    mode and packed weights then serve this one too)."""
    if not onednn_available() or getattr(_active, "mode", None) is not None:
        yield None
        return
    mode = OneDNNLinearMode(batch_hint)
    _active.mode = mode
    try:
        with mode:
            yield mode
    finally:
        _active.mode = None
