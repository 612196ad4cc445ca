"""Per-linear input statistics from calibration batches, collected decoder layer by decoder layer.

Sequential, like llm-compressor's pipeline: the inputs of decoder layer l+1 are the outputs of the
already-compressed layer l, so each layer is compressed against the activations it will really
see (GPTQ's Hessian must come from those) and only one layer's activations are held at a time.
Compared with llm-compressor it is lean: one capture of the embeddings, two forwards per layer
(calibrate, then propagate through the compressed layer), the LM head never runs, statistics of
linears fed the same tensor (q/k/v, gate/up) are computed once, padding tokens are dropped,
and everything runs under ``torch.inference_mode``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

Batch = dict[str, torch.Tensor]
Progress = Callable[[str, float], None]  # (message, fraction done in [0, 1])


@dataclass
class InputStats:
    """Running sums over the calibration tokens seen by one linear layer."""

    sumsq: torch.Tensor  # [I] sum of x_j^2
    xtx: torch.Tensor | None  # [I, I] sum of x x^T, when a Hessian is needed
    n: int = 0
    absmax: torch.Tensor | None = None  # [I] max |x_j| (SmoothQuant's activation scale)

    def col_norms(self) -> torch.Tensor:
        """``||X_j||_2`` per input column (Wanda's activation factor)."""
        return self.sumsq.sqrt()

    def hessian(self) -> torch.Tensor:
        """``H = 2 X^T X / n`` (GPTQ's layer-wise Hessian)."""
        if self.xtx is None:
            raise ValueError("Hessian was not collected for this layer")
        return self.xtx * (2.0 / max(self.n, 1))


@dataclass
class LayerInputs:
    """What one calibration batch feeds a decoder layer."""

    hidden: torch.Tensor
    kwargs: dict
    token_mask: torch.Tensor | None  # [B*T] bool, False on padding


class _Stop(Exception):
    pass


class StatsCollector:
    """Forward pre-hooks that accumulate :class:`InputStats` for a set of linears."""

    def __init__(self, modules: dict[str, nn.Linear], hessian: bool, stop_when_done: bool = False):
        self.modules = modules
        self.hessian = hessian
        # raise _Stop once every module has seen its input: the rest of the forward (at least the
        # last linear's matmul) is wasted work when only input statistics are wanted
        self.stop_when_done = stop_when_done
        self._fired: set[str] = set()
        self.stats: dict[str, InputStats] = {}
        self.alias: dict[str, str] = {}  # module -> module whose identical input was already counted
        self.token_mask: torch.Tensor | None = None
        self._seen: dict[int, tuple[torch.Tensor, str]] = {}
        self._handles: list = []

    def __enter__(self) -> "StatsCollector":
        for name, mod in self.modules.items():
            self._handles.append(mod.register_forward_pre_hook(self._hook(name)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._seen.clear()

    def end_batch(self) -> None:
        self._seen.clear()  # drops the strong references that make ``id`` comparisons safe
        self._fired.clear()

    def _done(self, name: str) -> None:
        self._fired.add(name)
        if self.stop_when_done and len(self._fired) == len(self.modules):
            raise _Stop

    def _hook(self, name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            x = args[0]
            seen = self._seen.get(id(x))
            if seen is not None and seen[0] is x:
                self.alias[name] = seen[1]
                self._done(name)
                return
            self._seen[id(x)] = (x, name)
            x2 = x.reshape(-1, x.shape[-1])
            if self.token_mask is not None and self.token_mask.numel() == x2.shape[0]:
                x2 = x2[self.token_mask]
            x2 = x2.float()
            st = self.stats.get(name)
            if st is None:
                width = x2.shape[1]
                xtx = torch.zeros(width, width, device=x2.device) if self.hessian else None
                st = self.stats[name] = InputStats(torch.zeros(width, device=x2.device), xtx)
            st.sumsq += (x2 * x2).sum(dim=0)
            amax = x2.abs().amax(dim=0) if x2.shape[0] else torch.zeros_like(st.sumsq)
            st.absmax = amax if st.absmax is None else torch.maximum(st.absmax, amax)
            if st.xtx is not None:
                st.xtx.addmm_(x2.T, x2)
            st.n += x2.shape[0]
            self._done(name)

        return hook

    def result(self) -> dict[str, InputStats]:
        out = dict(self.stats)
        for name, owner in self.alias.items():
            out[name] = self.stats[owner]
        return out


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The stack of transformer blocks (``model.model.layers`` for Llama-style models)."""
    inner = model.get_decoder() if hasattr(model, "get_decoder") else getattr(model, "model", model)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(f"cannot find decoder layers in {type(model).__name__}")
    return layers


def layer_prefix(model: nn.Module, index: int) -> str:
    layers = decoder_layers(model)
    for name, mod in model.named_modules():
        if mod is layers[index]:
            return name
    raise ValueError(f"decoder layer {index} is not a submodule of the model")


def _token_mask(batch: Batch) -> torch.Tensor | None:
    mask = batch.get("attention_mask")
    return None if mask is None else mask.reshape(-1).bool()


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.inference_mode()
def capture_decoder_inputs(model: nn.Module, batches: list[Batch]) -> list[LayerInputs]:
    """Run each batch up to the first decoder layer and keep what it receives (args and kwargs)."""
    first = decoder_layers(model)[0]
    captured: list[tuple[torch.Tensor, dict]] = []

    def grab(module, args, kwargs):
        kwargs = dict(kwargs)
        hidden = args[0] if args else kwargs.pop("hidden_states")
        captured.append((hidden, kwargs))
        raise _Stop

    handle = first.register_forward_pre_hook(grab, with_kwargs=True)
    dev = _device(model)
    out: list[LayerInputs] = []
    try:
        for batch in batches:
            ids = batch["input_ids"].to(dev)
            mask = batch.get("attention_mask")
            try:
                model(input_ids=ids, attention_mask=None if mask is None else mask.to(dev), use_cache=False)
            except _Stop:
                pass
            hidden, kwargs = captured.pop()
            tm = _token_mask(batch)
            out.append(LayerInputs(hidden, kwargs, None if tm is None else tm.to(dev)))
    finally:
        handle.remove()
    return out


def _run_layer(layer: nn.Module, inp: LayerInputs) -> torch.Tensor:
    out = layer(inp.hidden, **inp.kwargs)
    return out[0] if isinstance(out, tuple) else out


@torch.inference_mode()
def sequential_compress(
    model: nn.Module,
    batches: list[Batch],
    targets: dict[str, nn.Linear],
    needs_stats: bool,
    hessian: bool,
    compress_fn: Callable[[str, nn.Linear, InputStats | None], None],
    progress: Progress | None = None,
) -> None:
    """Compress every target linear; the ones inside decoder layers see calibration stats of their
    real (already-compressed-upstream) inputs when ``needs_stats``.

    Targets outside the decoder layers (e.g. an un-excluded ``lm_head``) get ``stats=None``.
    """
    layers = decoder_layers(model)
    prefixes = [layer_prefix(model, i) + "." for i in range(len(layers))]
    done: set[str] = set()
    inputs = capture_decoder_inputs(model, batches) if needs_stats else []
    total = len(layers)
    for i, layer in enumerate(layers):
        own = {n: m for n, m in targets.items() if n.startswith(prefixes[i])}
        stats: dict[str, InputStats] = {}
        if needs_stats and own:
            with StatsCollector(own, hessian, stop_when_done=True) as col:
                for inp in inputs:
                    col.token_mask = inp.token_mask
                    try:
                        _run_layer(layer, inp)
                    except _Stop:
                        pass
                    col.end_batch()
            stats = col.result()
        for name, mod in own.items():
            compress_fn(name, mod, stats.get(name))
            done.add(name)
        if needs_stats and i + 1 < total:
            for inp in inputs:
                inp.hidden = _run_layer(layer, inp)
        if progress is not None:
            progress(f"layer {i + 1}/{total}", (i + 1) / total)
    for name, mod in targets.items():
        if name not in done:
            compress_fn(name, mod, None)


@torch.inference_mode()
def collect_stats(
    model: nn.Module, batches: list[Batch], modules: dict[str, nn.Linear], hessian: bool = False
) -> dict[str, InputStats]:
    """One plain forward of the whole model with hooks (no sequential compression): for
    sensitivity estimates and sparsity allocation on the uncompressed model."""
    dev = _device(model)
    with StatsCollector(modules, hessian) as col:
        for batch in batches:
            col.token_mask = None if _token_mask(batch) is None else _token_mask(batch).to(dev)
            mask = batch.get("attention_mask")
            model(
                input_ids=batch["input_ids"].to(dev),
                attention_mask=None if mask is None else mask.to(dev),
                use_cache=False,
            )
            col.end_batch()
    return col.result()
