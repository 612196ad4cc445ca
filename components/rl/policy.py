"""The trained policy: full weights or a peft LoRA wrapper, the frozen reference, saving, sparsity."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from components.models import load_model
from components.rl.config import RLConfig


def build_policy(cfg: RLConfig, base_model_dir: Path, init_checkpoint: Path | None, device: str,
                 dtype: torch.dtype) -> Any:
    """Full-parameter policy, or a peft LoRA wrapper around the frozen base model; from the
    checkpoint of the previous segment when there is one. Gradient checkpointing when asked."""
    if cfg.lora is None:
        model = load_model(init_checkpoint / "model" if init_checkpoint else base_model_dir, device, dtype)
    else:
        from peft import LoraConfig, PeftModel, get_peft_model

        base = load_model(base_model_dir, device, dtype)
        if init_checkpoint is not None:
            model = PeftModel.from_pretrained(base, init_checkpoint / "adapter", is_trainable=True)
        else:
            torch.manual_seed(cfg.seed)  # LoRA A matrices are randomly initialised
            lcfg = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                              target_modules=cfg.lora.target_modules, bias="none", task_type="CAUSAL_LM")
            model = get_peft_model(base, lcfg)
    return model


def enable_gradient_checkpointing(model: Any) -> None:
    model.gradient_checkpointing_enable()
    model.config.use_cache = False


def reference_policy(cfg: RLConfig, base_model_dir: Path, device: str, dtype: torch.dtype) -> Any | None:
    """The frozen base model the KL term compares with; None without a KL term."""
    if cfg.loss.kl_coef <= 0:
        return None
    ref = load_model(base_model_dir, device, dtype).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def save_policy(model: Any, tokenizer: Any, out_dir: Path, lora: bool) -> Any:
    """Write ``model/`` (plain merged weights downstream stages load without peft) and, for LoRA,
    ``adapter/`` (what the next segment resumes from); returns the saved (merged) model."""
    if lora:
        model.save_pretrained(out_dir / "adapter")
        canonical_adapter(out_dir / "adapter")
        model = model.merge_and_unload()
    model.save_pretrained(out_dir / "model")
    tokenizer.save_pretrained(out_dir / "model")
    return model


def canonical_adapter(folder: Path) -> None:
    """Make a saved peft adapter the same bytes in any process and folder, so its segment digest
    is reproducible: peft writes the base model's absolute path into ``adapter_config.json`` and a
    README model card, and ``target_modules`` in set order (which follows PYTHONHASHSEED). The
    base is this segment's input (its digest is in the cache key) and is passed explicitly when
    the adapter is loaded, so the path is not needed."""
    cfg_path = folder / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = None
    if isinstance(cfg.get("target_modules"), list):
        cfg["target_modules"] = sorted(cfg["target_modules"])
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True))
    (folder / "README.md").unlink(missing_ok=True)


def update_sparsity(model: Any, base_model_dir: Path, device: str, dtype: torch.dtype) -> float:
    """Share of parameters that did NOT change since the base model (RL updates are sparse)."""
    base = dict(load_model(base_model_dir, device, dtype).named_parameters())
    same = total = 0
    for n, p in model.named_parameters():
        q = base.get(n)
        if q is None:
            continue
        same += int((p.detach() == q.detach()).sum())
        total += p.numel()
    return same / max(1, total)
