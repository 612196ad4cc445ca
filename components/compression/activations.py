"""Run-time int8 quantization of linear inputs (the "A8" of W8A8), for models held by transformers.

vLLM quantizes each token's input to a W8A8 linear on the fly; a transformers model evaluated by
posttrain must compute the same thing, or its accuracy would flatter the served model. Forward
pre-hooks do it, and a sidecar file next to a dense checkpoint (``activation_quant.json``) makes
``components.models.load_model`` put them back when the variant is loaded again (evaluation,
serving fallbacks), since ``save_pretrained`` does not keep hooks.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from kernels.quant import fake_quantize_activations

SIDECAR = "activation_quant.json"


def install_activation_quant(model: nn.Module, names: list[str], bits: int = 8) -> list:
    """Fake-quantize the input of each named linear per token; returns the hook handles."""
    modules = dict(model.named_modules())
    missing = [n for n in names if not isinstance(modules.get(n), nn.Linear)]
    if missing:
        raise ValueError(f"activation quantization names modules that are not linears: {missing[:5]}")

    def hook(module: nn.Module, args: tuple) -> tuple:
        return (fake_quantize_activations(args[0], bits), *args[1:])

    return [modules[n].register_forward_pre_hook(hook) for n in names]


def write_sidecar(folder: str | Path, names: list[str], bits: int = 8) -> Path:
    path = Path(folder) / SIDECAR
    spec = {"num_bits": bits, "strategy": "token", "symmetric": True, "dynamic": True, "targets": sorted(names)}
    path.write_text(json.dumps(spec, indent=2) + "\n")
    return path


def apply_sidecar(model: nn.Module, folder: str | Path) -> bool:
    """Install the hooks a checkpoint folder's sidecar asks for; False when it has none."""
    path = Path(folder) / SIDECAR
    if not path.exists():
        return False
    spec = json.loads(path.read_text())
    install_activation_quant(model, list(spec["targets"]), int(spec["num_bits"]))
    return True
