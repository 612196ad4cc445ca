"""Stage 3: GRPO-family RL in resumable segments (one cached task per segment)."""

from __future__ import annotations

from pathlib import Path

import torch

from components.difficulty.estimate import DifficultyRecord
from components.difficulty.selection import SelectionConfig, select_prompts
from components.rl.config import RLConfig
from components.rl.segment import run_segment
from components.stages.context import StageContext
from components.stages.curate import load_split
from components.stages.difficulty import load_records


def segments(cfg: RLConfig) -> list[tuple[int, int]]:
    return [(s, min(cfg.steps, s + cfg.segment_steps)) for s in range(0, cfg.steps, cfg.segment_steps)]


def training_pool(dataset_dir: Path, difficulty_dir: Path | None, selection: SelectionConfig
                  ) -> tuple[list[dict], list[float] | None, list[DifficultyRecord] | None]:
    rows = load_split(dataset_dir, "train")
    if difficulty_dir is None:
        return rows, None, None
    records = load_records(difficulty_dir)
    chosen = select_prompts(records, selection)
    by_id = {r["id"]: r for r in rows}
    pool = [by_id[c.id] for c in chosen if c.id in by_id]
    weights = [c.weight for c in chosen if c.id in by_id]
    if not pool:
        raise ValueError("difficulty selection left no training prompts: relax estimate_difficulty.selection")
    return pool, weights, records


def run(cfg: RLConfig, selection: SelectionConfig, model_dir: Path, dataset_dir: Path, difficulty_dir: Path | None,
        prev_checkpoint: Path | None, start: int, end: int, out_dir: Path, ctx: StageContext,
        dtype: torch.dtype = torch.float32) -> dict[str, float]:
    pool, weights, records = training_pool(dataset_dir, difficulty_dir, selection)
    return run_segment(
        base_model_dir=model_dir, init_checkpoint=prev_checkpoint, rows=pool, weights=weights,
        difficulty=records, cfg=cfg, start_step=start, end_step=end, out_dir=out_dir,
        device=ctx.device, dtype=dtype, log_metrics=ctx.log_metrics, progress=ctx.progress,
        log_table=ctx.log_table, log_artifact=ctx.log_artifact,
    ) | {"pool_size": float(len(pool))}
