"""Stage 0: turn the recipe's model source into a plain transformers checkpoint folder."""

from __future__ import annotations

from pathlib import Path

from components.models import prepare_model


def run(cfg, out_dir: Path, ctx) -> dict[str, float]:
    ctx.progress(f"preparing model {cfg.source}", 0.0)
    info = prepare_model(cfg.source, out_dir, tiny=cfg.tiny.model_dump(), seed=cfg.seed)
    ctx.progress("model ready", 1.0)
    return {"params": float(info.get("params", 0))}
