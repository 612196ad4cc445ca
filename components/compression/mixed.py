"""Mixed 4/8-bit precision: per-layer sensitivity, then a bisection for the most compressed
assignment whose accuracy drop stays within a budget.

Bits are chosen per *unit*, not per linear: vLLM fuses q/k/v into ``qkv_proj`` and gate/up into
``gate_up_proj`` and requires every shard of a fused layer to share one scheme, so those move
together.
"""

from __future__ import annotations

import copy
import math
from typing import Callable

import torch
from torch import nn

from components.compression.apply import compress_model, resolve_group_size, target_linears
from components.compression.calibration import Batch, Progress, collect_stats
from components.compression.config import VariantConfig
from components.compression.state import CompressionState
from kernels.quant import fake_quantize

FUSED = {"q_proj": "qkv_proj", "k_proj": "qkv_proj", "v_proj": "qkv_proj", "gate_proj": "gate_up_proj", "up_proj": "gate_up_proj"}


def fused_units(names: list[str]) -> dict[str, list[str]]:
    """Unit name -> linear names (``...self_attn.qkv_proj`` -> q/k/v_proj), order kept."""
    units: dict[str, list[str]] = {}
    for n in names:
        parent, _, leaf = n.rpartition(".")
        unit = f"{parent}.{FUSED[leaf]}" if parent and leaf in FUSED else n
        units.setdefault(unit, []).append(n)
    return units


@torch.inference_mode()
def mean_loss(model: nn.Module, batches: list[Batch]) -> float:
    """Token-weighted mean next-token cross-entropy over the batches (padding ignored)."""
    dev = next(model.parameters()).device
    total, count = 0.0, 0
    for b in batches:
        ids = b["input_ids"].to(dev)
        mask = b.get("attention_mask")
        mask = torch.ones_like(ids) if mask is None else mask.to(dev)
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1].float()
        tgt = ids[:, 1:]
        valid = (mask[:, 1:] * mask[:, :-1]).bool()
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1), reduction="none")
        total += float(nll[valid.reshape(-1)].sum())
        count += int(valid.sum())
    return total / max(count, 1)


def layer_sensitivity(
    model: nn.Module,
    variant: VariantConfig,
    batches: list[Batch],
    method: str = "hessian_trace",
    low_bits: int = 4,
    progress: Progress | None = None,
) -> dict[str, float]:
    """Sensitivity per unit to RTN quantization at ``low_bits`` (higher = keep more bits).

    ``loss``: calibration loss increase when only that unit is quantized (one forward per unit).
    ``hessian_trace``: ``sum_j diag(H)_j * ||dW_j||^2`` with ``diag(H) = 2 E[x_j^2]`` - the
    second-order estimate of the output error, from one forward with hooks (much cheaper).
    """
    if variant.quant is None:
        raise ValueError("sensitivity needs the variant's quant section")
    targets = target_linears(model, variant.exclude)
    group = resolve_group_size(variant.quant.group_size, [m.in_features for m in targets.values()])
    sym = variant.quant.symmetric
    units = fused_units(list(targets))
    out: dict[str, float] = {}
    if method == "hessian_trace":
        stats = collect_stats(model, batches, targets)
        for unit, names in units.items():
            total = 0.0
            for n in names:
                W = targets[n].weight.detach().float()
                dW2 = (W - fake_quantize(W, low_bits, group, sym)).pow(2).sum(dim=0)
                st = stats[n]
                total += float((2.0 * st.sumsq / max(st.n, 1) * dW2).sum())
            out[unit] = total
        return out
    if method != "loss":
        raise ValueError(f"sensitivity must be 'loss' or 'hessian_trace', got {method!r}")
    base = mean_loss(model, batches)
    for i, (unit, names) in enumerate(units.items()):
        saved = {n: targets[n].weight.detach().clone() for n in names}
        with torch.no_grad():
            for n in names:
                w = targets[n].weight
                w.copy_(fake_quantize(w.detach(), low_bits, group, sym))
        out[unit] = mean_loss(model, batches) - base
        with torch.no_grad():
            for n in names:
                targets[n].weight.copy_(saved[n])
        if progress is not None:
            progress(f"sensitivity {unit}", (i + 1) / len(units))
    return out


def search_mixed_precision(
    layers: list[str],
    sensitivities: dict[str, float],
    evaluate: Callable[[dict[str, int]], float],
    baseline: float,
    budget_points: float,
    bit_choices: list[int] = (4, 8),
    history: list[dict] | None = None,
) -> dict[str, int]:
    """Most compressed ``{layer: bits}`` with ``baseline - evaluate(assignment) <= budget_points``.

    Layers whose sensitivity is above a threshold get the high width, the rest the low one.
    Lowering the threshold one layer at a time (most sensitive first) gives L+1 nested
    assignments; assuming accuracy does not fall as layers gain bits, the smallest passing
    number of high-bit layers is found by bisection in about log2(L+1) + 1 evaluations.
    If no assignment below all-high passes, all-high is returned (nothing smaller is safe).
    """
    low, high = min(bit_choices), max(bit_choices)
    order = sorted(layers, key=lambda n: (-sensitivities[n], layers.index(n)))
    cache: dict[int, bool] = {}

    def assignment(k: int) -> dict[str, int]:
        high_set = set(order[:k])
        return {n: high if n in high_set else low for n in layers}

    def passes(k: int) -> bool:
        if k not in cache:
            acc = evaluate(assignment(k))
            drop = baseline - acc
            cache[k] = drop <= budget_points
            if history is not None:
                threshold = sensitivities[order[k - 1]] if k else math.inf
                history.append({"high_layers": k, "threshold": threshold, "accuracy": acc, "drop": drop})
        return cache[k]

    lo, hi = 0, len(order)  # invariant: the answer lies in [lo, hi]; hi passes by assumption
    while lo < hi:
        mid = (lo + hi) // 2
        if passes(mid):
            hi = mid
        else:
            lo = mid + 1
    return assignment(lo)


def run_mixed_precision(
    model: nn.Module,
    variant: VariantConfig,
    calib_batches: list[Batch],
    evaluate_model: Callable[[nn.Module], float],
    baseline: float,
    progress: Progress | None = None,
) -> tuple[CompressionState, dict[str, int], list[dict]]:
    """Sensitivity -> search (each probe compresses a copy of the model and scores it with
    ``evaluate_model``, in points) -> ``model`` compressed in place with the chosen bits."""
    mp = variant.mixed_precision
    if mp is None or variant.quant is None:
        raise ValueError("variant has no mixed_precision / quant section")
    sens = layer_sensitivity(model, variant, calib_batches, mp.sensitivity, min(mp.bit_choices), progress)
    units = fused_units(list(target_linears(model, variant.exclude)))
    passing: dict[str, tuple[dict, CompressionState]] = {}

    def per_linear(unit_bits: dict[str, int]) -> dict[str, int]:
        return {n: b for u, b in unit_bits.items() for n in units[u]}

    def evaluate(unit_bits: dict[str, int]) -> float:
        trial = copy.deepcopy(model)
        st = compress_model(trial, variant, calib_batches, bits_override=per_linear(unit_bits))
        acc = evaluate_model(trial)
        if baseline - acc <= mp.budget_points:
            # bisection probes passing assignments in shrinking order: the last one is the answer
            passing.clear()
            passing[str(sorted(unit_bits.items()))] = ({k: v.detach().clone() for k, v in trial.state_dict().items()}, st)
        return acc

    history: list[dict] = []
    chosen = search_mixed_precision(list(units), sens, evaluate, baseline, mp.budget_points, mp.bit_choices, history)
    key = str(sorted(chosen.items()))
    if key in passing:
        weights, state = passing[key]
        model.load_state_dict(weights)
    else:  # all-high fallback, never probed
        state = compress_model(model, variant, calib_batches, bits_override=per_linear(chosen))
    return state, per_linear(chosen), history
