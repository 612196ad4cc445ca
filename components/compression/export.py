"""Write compressed models: a dense transformers checkpoint and a compressed-tensors one for vLLM.

Weight-only schemes use the ``pack-quantized`` format with the ``group`` strategy
(W4A16 / W8A16: int weights packed 8 or 4 to an int32, one scale per group, zero points only when
asymmetric) and a ``quantization_config`` in config.json with ``quant_method: compressed-tensors``,
which is what both transformers' loader and vLLM's ``CompressedTensorsWNA16`` read. Our own
scales and zero points are written, so the checkpoint holds exactly the integers we computed.
W8A8 (``rtn-w8a8``/``gptq-w8a8``) uses ``int-quantized``: int8 weights with one scale per output
channel and ``input_activations`` int8 per token, dynamic (``CompressedTensorsW8A8Int8`` in vLLM,
which runs on x86 CPUs without AVX-512 as well as on GPUs).

Pruned-only variants have no quantized layers: vLLM no longer has 2:4 sparse kernels, so they are
served as the dense checkpoint with zeros.
"""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path

import torch
from torch import nn

from components.compression.activations import write_sidecar
from components.compression.calibration import Batch
from components.compression.state import CompressionState


def export_dense(model: nn.Module, tokenizer, out_dir: str | Path, state: CompressionState | None = None) -> Path:
    """``save_pretrained`` of the model as it computes (pruned zeros, dequantized fake-quant weights).

    A W8A8 state adds the activation sidecar, so ``load_model`` quantizes inputs again."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    if state is not None and state.activation_bits:
        write_sidecar(out, [n for n, r in state.layers.items() if r.bits is not None], state.activation_bits)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return out


def _scheme_key(state: CompressionState, name: str) -> tuple[int, int, bool]:
    r = state.layers[name]
    return r.bits, 0 if state.channelwise else r.group_size, r.symmetric  # 0: per output channel


def checkpoint_format(state: CompressionState) -> str:
    """``int-quantized`` (one int8 per weight) for W8A8, which vLLM's int8 GEMM path reads;
    ``pack-quantized`` (ints packed into int32 words) for weight-only schemes."""
    return "int-quantized" if state.activation_bits else "pack-quantized"


def build_quantization_config(state: CompressionState, all_linears: list[str]):
    """One config group per (bits, group size, symmetry); targets are ``Linear`` when every
    quantized linear shares one scheme, else exact module names (mixed precision)."""
    from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig, QuantizationScheme

    quantized = [n for n, r in state.layers.items() if r.bits is not None]
    schemes: dict[tuple[int, int, bool], list[str]] = {}
    for n in quantized:
        schemes.setdefault(_scheme_key(state, n), []).append(n)
    uniform = len(schemes) == 1
    groups = {}
    acts = None
    if state.activation_bits:
        acts = QuantizationArgs(num_bits=state.activation_bits, type="int", symmetric=True, strategy="token", dynamic=True)
    for i, ((bits, group_size, symmetric), names) in enumerate(sorted(schemes.items())):
        if group_size:
            w = QuantizationArgs(num_bits=bits, type="int", symmetric=symmetric, strategy="group", group_size=group_size)
        else:
            w = QuantizationArgs(num_bits=bits, type="int", symmetric=symmetric, strategy="channel")
        groups[f"group_{i}"] = QuantizationScheme(
            targets=["Linear"] if uniform else sorted(names), weights=w, input_activations=acts
        )
    ignore = sorted(set(all_linears) - set(quantized)) if uniform else []
    return QuantizationConfig(
        config_groups=groups, ignore=ignore, format=checkpoint_format(state), quantization_status="frozen"
    )


def export_compressed_tensors(model: nn.Module, state: CompressionState, tokenizer, out_dir: str | Path) -> Path:
    """Write a compressed-tensors ``pack-quantized`` checkpoint that transformers and vLLM load.

    Works on a copy: the caller's model keeps its plain fake-quantized weights.
    """
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import apply_quantization_config

    if not any(r.bits is not None for r in state.layers.values()):
        return export_dense(model, tokenizer, out_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    m = copy.deepcopy(model)
    all_linears = [n for n, mod in m.named_modules() if isinstance(mod, nn.Linear)]
    apply_quantization_config(m, build_quantization_config(state, all_linears), show_progress=False)
    modules = dict(m.named_modules())
    with torch.no_grad():
        for name, rec in state.layers.items():
            if rec.bits is None:
                continue
            mod = modules[name]
            mod.weight_scale.copy_(rec.scale.to(mod.weight_scale.dtype))
            if hasattr(mod, "weight_zero_point"):
                mod.weight_zero_point.copy_(rec.zero.to(mod.weight_zero_point.dtype))
    compressor = ModelCompressor.from_pretrained_model(m, quantization_format=checkpoint_format(state))
    compressor.compress_model(m)
    m.save_pretrained(out)
    compressor.update_config(str(out))
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return out


def dir_size_bytes(path: str | Path) -> int:
    """Total size of the files under ``path`` (what a checkpoint costs on disk)."""
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            total += os.path.getsize(os.path.join(root, f))
    return total


def perplexity(model: nn.Module, batches: list[Batch]) -> float:
    """exp(mean next-token NLL) over the non-padding tokens of ``batches``."""
    from components.compression.mixed import mean_loss

    return math.exp(mean_loss(model, batches))
