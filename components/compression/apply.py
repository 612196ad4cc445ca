"""Prune and/or weight-quantize a causal LM in place according to a :class:`VariantConfig`.

Order per linear: prune (magnitude or Wanda score, 2:4 or unstructured) then quantize (RTN or GPTQ
with the pruning mask held fixed, so quantization keeps the sparsity). The model's weights end up
holding the pruned / fake-quantized values; the returned state keeps the integers for export.
"""

from __future__ import annotations

import time
from fnmatch import fnmatch

import torch
from torch import nn

from components.compression.activations import install_activation_quant
from components.compression.calibration import (
    Batch,
    InputStats,
    Progress,
    collect_stats,
    decoder_layers,
    layer_prefix,
    sequential_compress,
)
from components.compression.config import PruneConfig, QuantConfig, VariantConfig
from components.compression.smoothing import smooth
from components.compression.state import CompressionState, LayerCompression, compute_stats
from kernels.gptq import gptq_quantize
from kernels.quant import dequantize, pack_int, quantize_rtn
from kernels.sparsity import nm_mask, unstructured_mask

GROUP_CANDIDATES = (128, 64, 32)
OWL_LAMBDA = 0.08  # OWL's defaults: sparsity may move +-8 points per layer
OWL_M = 5.0  # a score is an outlier above 5x its layer's mean score


def is_excluded(name: str, exclude: list[str]) -> bool:
    """A pattern excludes a module when it equals a dotted component of its name or fnmatch-es it."""
    parts = name.split(".")
    return any(p in parts or fnmatch(name, p) for p in exclude)


def target_linears(model: nn.Module, exclude: list[str]) -> dict[str, nn.Linear]:
    """Every ``nn.Linear`` not excluded, in module order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and not is_excluded(n, exclude)}


def resolve_group_size(spec: int | str, in_widths: list[int]) -> int:
    """``auto``: the largest of 128/64/32 dividing every targeted input width (576 -> 64)."""
    if spec == "auto":
        for g in GROUP_CANDIDATES:
            if all(w % g == 0 for w in in_widths):
                return g
        raise ValueError(f"no group size in {GROUP_CANDIDATES} divides all input widths {sorted(set(in_widths))}")
    bad = sorted({w for w in in_widths if w % int(spec)})
    if bad:
        raise ValueError(f"group_size {spec} does not divide input widths {bad}; use 'auto'")
    return int(spec)


def prune_scores(weight: torch.Tensor, prune: PruneConfig, stats: InputStats | None) -> torch.Tensor:
    """|W| for magnitude; |W| * ||X_j||_2 for Wanda (compared within each output row)."""
    score = weight.detach().float().abs()
    if prune.method == "wanda":
        if stats is None:
            raise ValueError("Wanda needs calibration statistics for this layer (did it see any input?)")
        score = score * stats.col_norms().to(score.device).unsqueeze(0)
    return score


def prune_mask(score: torch.Tensor, prune: PruneConfig, sparsity: float) -> torch.Tensor:
    if prune.pattern == "2:4":
        return nm_mask(score, 2, 4)
    return unstructured_mask(score, sparsity, per_row=prune.method == "wanda")


def compress_linear(
    name: str,
    module: nn.Linear,
    prune: PruneConfig | None,
    quant: QuantConfig | None,
    bits: int | None,
    group_size: int | None,
    stats: InputStats | None,
    sparsity: float,
) -> LayerCompression:
    """Prune then quantize one linear in place; return its record."""
    weight = module.weight
    W = weight.detach().float()
    rec = LayerCompression(name=name, shape=tuple(W.shape))
    mask = None
    if prune is not None:
        mask = prune_mask(prune_scores(W, prune, stats), prune, sparsity)
        W = W * mask
        rec.mask = mask
        rec.sparsity = 1.0 - mask.float().mean().item()
    if quant is not None:
        assert bits is not None and group_size is not None
        if quant.method == "gptq":
            if stats is None or stats.xtx is None:
                raise ValueError(f"GPTQ needs the calibration Hessian of {name} (did it see any input?)")
            res = gptq_quantize(
                W, stats.hessian(), bits=bits, group_size=group_size, symmetric=quant.symmetric,
                block_size=quant.block_size, damp=quant.damp, act_order=quant.act_order, mask=mask,
            )  # fmt: skip
            q, scale, zero, W = res.q, res.scale, res.zero, res.weight.float()
        else:
            q, scale, zero = quantize_rtn(W, bits, group_size, quant.symmetric)
            W = dequantize(q, scale, zero, group_size)
        rec.bits, rec.group_size, rec.symmetric = bits, group_size, quant.symmetric
        rec.packed, rec.scale, rec.zero = pack_int(q, bits), scale, zero
    with torch.no_grad():
        weight.copy_(W.to(weight.dtype))
    return rec


def allocate_sparsity(
    model: nn.Module, targets: dict[str, nn.Linear], prune: PruneConfig, batches: list[Batch]
) -> dict[str, float]:
    """Per-layer sparsity. ``sensitivity`` follows OWL (Yin et al., 2024): decoder layers with more
    outlier scores (> 5x their linear's mean) keep more weights, within +-8 points, same mean."""
    if prune.allocation == "uniform" or prune.pattern == "2:4":
        return {n: prune.sparsity for n in targets}
    stats = collect_stats(model, batches, targets) if prune.method == "wanda" else {}
    layers = decoder_layers(model)
    prefixes = [layer_prefix(model, i) + "." for i in range(len(layers))]
    ratios = []
    for pre in prefixes:
        outliers = total = 0
        for n, m in targets.items():
            if n.startswith(pre):
                s = prune_scores(m.weight, prune, stats.get(n))
                outliers += int((s > OWL_M * s.mean()).sum())
                total += s.numel()
        ratios.append(outliers / max(total, 1))
    r = torch.tensor(ratios, dtype=torch.float64)
    spread = float(r.max() - r.min())
    density = (r - r.min()) / spread * (2 * OWL_LAMBDA) if spread > 0 else torch.zeros_like(r)
    density = density - density.mean() + (1.0 - prune.sparsity)
    out = {n: prune.sparsity for n in targets}
    for pre, d in zip(prefixes, density.tolist()):
        for n in targets:
            if n.startswith(pre):
                out[n] = min(max(1.0 - d, 0.0), 0.99)
    return out


def compress_model(
    model: nn.Module,
    variant: VariantConfig,
    calib_batches: list[Batch],
    progress: Progress | None = None,
    bits_override: dict[str, int] | None = None,
) -> CompressionState:
    """Compress ``model`` in place. ``calib_batches``: dicts with ``input_ids`` and
    ``attention_mask`` (needed by Wanda, GPTQ and OWL allocation; unused by magnitude + RTN).
    ``bits_override`` gives per-layer bit widths (mixed precision); others use ``quant.bits``."""
    t0 = time.perf_counter()
    prune, quant = variant.prune, variant.quant
    if quant is not None and quant.smoothing is not None:
        if not calib_batches:
            raise ValueError(f"variant {variant.name!r} smooths activations and needs calibration batches")
        smooth(model, calib_batches, quant.smoothing)  # exact in float; changes what rounding sees
    targets = target_linears(model, variant.exclude)
    if not targets:
        raise ValueError(f"variant {variant.name!r} targets no linear layer (exclude={variant.exclude})")
    channelwise = quant is not None and quant.group_size == "channel"
    group_size = (
        resolve_group_size(quant.group_size, [m.in_features for m in targets.values()])
        if quant is not None and not channelwise
        else None
    )
    needs_stats = (prune is not None and prune.method == "wanda") or (quant is not None and quant.method == "gptq")
    if needs_stats and not calib_batches:
        raise ValueError(f"variant {variant.name!r} needs calibration batches")
    sparsity = allocate_sparsity(model, targets, prune, calib_batches) if prune else {}
    overrides = bits_override or {}
    unknown = set(overrides) - set(targets)
    if unknown:
        raise ValueError(f"bits_override names layers that are not targeted: {sorted(unknown)[:5]}")
    records: dict[str, LayerCompression] = {}

    def compress_fn(name: str, module: nn.Linear, stats: InputStats | None) -> None:
        bits = overrides.get(name, quant.bits) if quant else None
        gs = module.in_features if channelwise else group_size  # one group per row = per-channel scale
        records[name] = compress_linear(name, module, prune, quant, bits, gs, stats, sparsity.get(name, 0.0))

    hessian = quant is not None and quant.method == "gptq"
    sequential_compress(model, calib_batches, targets, needs_stats, hessian, compress_fn, progress)
    activation_bits = quant.activation_bits if quant is not None else None
    if activation_bits:
        # from here on the model computes what a W8A8 server computes (inputs rounded per token)
        install_activation_quant(model, list(records), activation_bits)
    state = CompressionState(variant=variant, group_size=group_size, layers=records,
                             channelwise=channelwise, activation_bits=activation_bits)  # fmt: skip
    state.per_layer_sparsity = {n: r.sparsity for n, r in records.items()}
    state.per_layer_bits = {n: r.bits for n, r in records.items() if r.bits is not None}
    state.stats = compute_stats(model, records, time.perf_counter() - t0)
    return state
