"""What compression did to a model: per-layer packed ints, scales, zeros, masks, and summary figures.

Kept next to the model (whose weights already hold the pruned / fake-quantized values) so the
export can write a real compressed checkpoint without re-deriving the integers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from components.compression.config import VariantConfig


@dataclass
class LayerCompression:
    name: str
    shape: tuple[int, int]
    bits: int | None = None  # None: not quantized (pruned only)
    group_size: int | None = None
    symmetric: bool = True
    packed: torch.Tensor | None = None  # int32 [O, I * bits / 32]
    scale: torch.Tensor | None = None  # [O, I / group_size]
    zero: torch.Tensor | None = None  # int8 [O, I / group_size], signed, all 0 when symmetric
    mask: torch.Tensor | None = None  # bool [O, I], True = kept
    sparsity: float = 0.0  # fraction pruned by the mask

    @property
    def numel(self) -> int:
        return self.shape[0] * self.shape[1]


@dataclass
class CompressionState:
    variant: VariantConfig
    group_size: int | None  # chosen (or given) group size; None when nothing is quantized
    layers: dict[str, LayerCompression] = field(default_factory=dict)
    stats: dict[str, float] = field(default_factory=dict)
    per_layer_sparsity: dict[str, float] = field(default_factory=dict)
    per_layer_bits: dict[str, int] = field(default_factory=dict)
    channelwise: bool = False  # one weight scale per output row (group = the layer's input width)
    activation_bits: int | None = None  # 8: inputs quantized per token at run time (W8A8)

    def summary(self) -> dict:
        """JSON-friendly description (for MLflow params/metrics and the artifact's meta)."""
        return {
            "variant": self.variant.name,
            "group_size": "channel" if self.channelwise else self.group_size,
            "activation_bits": self.activation_bits,
            "stats": dict(self.stats),
            "per_layer_sparsity": dict(self.per_layer_sparsity),
            "per_layer_bits": dict(self.per_layer_bits),
        }


def _dtype_bits(dtype: torch.dtype) -> int:
    return torch.finfo(dtype).bits if dtype.is_floating_point else torch.iinfo(dtype).bits


def compute_stats(model: nn.Module, layers: dict[str, LayerCompression], seconds: float) -> dict[str, float]:
    """Sparsity (from the masks) and average bits per weight, over targeted and over all weights.

    ``avg_bits_targeted`` counts the nominal integer width (a pruned-only layer counts at its
    float width); ``avg_bits_targeted_with_scales`` adds the per-group scale (and zero point when
    asymmetric) stored in the model's dtype; ``avg_bits_all`` covers every parameter once
    (tied embeddings counted once), untargeted ones at their dtype width.
    """
    float_bits = _dtype_bits(next(model.parameters()).dtype)
    targeted = sum(r.numel for r in layers.values()) or 1
    pruned = sum(r.sparsity * r.numel for r in layers.values())
    nominal = 0.0
    with_scales = 0.0
    for r in layers.values():
        if r.bits is None:
            nominal += float_bits * r.numel
            with_scales += float_bits * r.numel
            continue
        nominal += r.bits * r.numel
        per_group = float_bits + (0 if r.symmetric else r.bits)
        with_scales += (r.bits + per_group / r.group_size) * r.numel
    total = 0
    total_bits = 0.0
    names = {id(m.weight): n for n, m in model.named_modules() if n in layers}
    for p in model.parameters():  # parameters() yields tied tensors once
        total += p.numel()
        name = names.get(id(p))
        if name is not None and layers[name].bits is not None:
            total_bits += layers[name].bits * p.numel()
        else:
            total_bits += _dtype_bits(p.dtype) * p.numel()
    return {
        "sparsity": pruned / targeted,
        "sparsity_all": pruned / max(total, 1),
        "avg_bits_targeted": nominal / targeted,
        "avg_bits_targeted_with_scales": with_scales / targeted,
        "avg_bits_all": total_bits / max(total, 1),
        "targeted_weights": float(targeted),
        "seconds": seconds,
    }
