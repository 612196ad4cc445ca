"""SmoothQuant (Xiao et al., 2023): move activation outliers into the weights before W8A8.

Per-token int8 activations lose the small channels of a token whose few outlier channels set the
scale. For each normalisation that feeds linears (``input_layernorm`` -> q/k/v,
``post_attention_layernorm`` -> gate/up in Llama-style blocks), channel j gets
``s_j = max|X_j|^alpha / max|W_:j|^(1 - alpha)``; the norm's weight is divided by ``s`` and the
linears' input columns multiplied by it. In float the model computes exactly the same function
(tested); only what quantization rounds changes. These are llm-compressor's default Llama mappings;
v -> o and up -> down are left alone (GQA ties several o_proj channels to one v channel).
"""

from __future__ import annotations

import torch
from torch import nn

from components.compression.calibration import Batch, collect_stats, decoder_layers

# (norm attribute of the block, linears it feeds) for Llama/Mistral/Qwen-style decoder blocks
MAPPINGS = (
    ("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
    ("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj")),
)


def _get(module: nn.Module, dotted: str) -> nn.Module | None:
    for part in dotted.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


def activation_absmax(model: nn.Module, batches: list[Batch]) -> dict[tuple[int, str], torch.Tensor]:
    """max |x_j| over the calibration tokens (padding dropped) at each mapped norm's output, read
    at the first linear it feeds (one plain forward with the calibration hooks)."""
    firsts: dict[str, tuple[int, str]] = {}
    modules: dict[str, nn.Linear] = {}
    for i, layer in enumerate(decoder_layers(model)):
        for norm_name, linears in MAPPINGS:
            first = _get(layer, linears[0])
            if isinstance(first, nn.Linear) and _get(layer, norm_name) is not None:
                name = f"{i}.{linears[0]}"
                firsts[name], modules[name] = (i, norm_name), first
    stats = collect_stats(model, batches, modules)
    return {firsts[n]: st.absmax for n, st in stats.items() if st.absmax is not None}


@torch.no_grad()
def smooth(model: nn.Module, batches: list[Batch], alpha: float = 0.5) -> int:
    """Apply SmoothQuant scales in place; returns how many norm -> linears groups were smoothed."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"smoothing alpha must be in [0, 1], got {alpha}")
    amax = activation_absmax(model, batches)
    done = 0
    for i, layer in enumerate(decoder_layers(model)):
        for norm_name, names in MAPPINGS:
            if (i, norm_name) not in amax:
                continue
            norm = _get(layer, norm_name)
            linears = [_get(layer, n) for n in names]
            if any(not isinstance(m, nn.Linear) for m in linears) or not hasattr(norm, "weight"):
                continue
            w_max = torch.stack([m.weight.abs().amax(dim=0).float() for m in linears]).amax(dim=0)
            a = amax[(i, norm_name)].to(w_max.device).clamp(min=1e-5)
            s = (a.pow(alpha) / w_max.clamp(min=1e-5).pow(1.0 - alpha)).clamp(min=1e-5)
            norm.weight.div_(s.to(norm.weight.dtype))
            if getattr(norm, "bias", None) is not None:
                norm.bias.div_(s.to(norm.bias.dtype))
            for m in linears:
                m.weight.mul_(s.to(m.weight.dtype).unsqueeze(0))
            done += 1
    return done
