"""Stage 2: per-prompt difficulty of the base policy, estimated once and reused.

The artifact's cache key covers the dataset digest, the model digest, the sampling
settings and the reward versions (see ``estimate_key_config``), so another recipe that
shares those inputs reuses it.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import torch

from components.difficulty.estimate import EstimateConfig, estimate_difficulty
from components.difficulty.report import bucket_table, plot_pass_rate_histogram
from components.engines.base import SamplingParams
from components.engines.transformers_engine import engine_for
from components.prompts import messages_for
from components.rewards import get_reward
from components.rl.env_rollouts import run_groups
from components.scoring import RewardScorer
from components.stages.curate import load_split

SELECTION_FIELDS = ("selection", "enabled", "batch_prompts")


def estimate_key_config(cfg, rows_tasks: set[str] | None = None) -> dict:
    """Only what changes the estimate enters its key; reward versions are added by task name."""
    d = cfg.model_dump(mode="json")
    for f in SELECTION_FIELDS + ("refresh",):
        d.pop(f, None)
    tasks = sorted(rows_tasks or {"numeric", "countdown"})
    d["reward_versions"] = {t: get_reward(t).version for t in tasks}
    return d


def run(cfg, model_dir: Path, dataset_dir: Path, out_dir: Path, ctx, dtype=torch.float32) -> dict[str, float]:
    from components.models import load_model, load_tokenizer

    rows = load_split(dataset_dir, "train")
    model = load_model(model_dir, ctx.device, dtype)
    engine = engine_for(model, load_tokenizer(model_dir), "difficulty")
    scorer = RewardScorer()
    calls: Counter[bool] = Counter()  # episodes with / without a tool call

    def sample_fn(indices: list[int], n: int, round_index: int) -> list[list[float]]:
        out: list[list[float]] = []
        for s in range(0, len(indices), cfg.batch_prompts):
            part = [rows[i] for i in indices[s : s + cfg.batch_prompts]]
            params = SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p,
                                    max_new_tokens=cfg.max_new_tokens,
                                    seed=cfg.seed * 1_000_003 + round_index * 10_007 + s)
            if cfg.environment is not None:  # pass rates through the environment's episodes
                groups, _pids, _s = run_groups(engine, cfg.environment, part, [n] * len(part), params)
                out.extend([[float(smp.reward or 0.0) for smp in g] for g in groups])
                calls.update(bool((smp.episode or {}).get("tool_calls")) for g in groups for smp in g)
                continue
            batch = engine.generate([messages_for(r) for r in part], n, params)
            out.extend([[scorer(r, smp.text) for smp in g] for r, g in zip(part, batch.groups)])
        return out

    n_rows = max(1, len(rows))

    def progress(d: dict) -> None:
        ctx.progress(f"round {d.get('round')}: {d.get('finished')}/{n_rows} prompts settled, "
                     f"{d.get('samples_used')} samples", float(d.get("finished", 0)) / n_rows)

    est_cfg = EstimateConfig.model_validate(cfg.model_dump(include=set(EstimateConfig.model_fields)))
    result = estimate_difficulty([r["id"] for r in rows], sample_fn, est_cfg, progress=progress)
    result.to_parquet(out_dir / "difficulty.parquet")
    summary = result.summary()
    (out_dir / "manifest.json").write_text(json.dumps({"rows": len(rows), "summary": summary}, indent=2, default=str))
    records = result.records
    plot_pass_rate_histogram(records, out_dir / "pass_rate_histogram.png")
    table = bucket_table(records)
    ctx.log_table(table, "bucket_table.json")
    ctx.log_artifact(out_dir / "pass_rate_histogram.png", None)
    ctx.extra["bucket_table"] = table
    figures = {k: float(v) for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if calls:
        figures["tool_call_rate"] = calls[True] / max(1, sum(calls.values()))
    return figures


def load_records(difficulty_dir: Path) -> list:
    from components.difficulty.estimate import read_parquet

    return list(read_parquet(Path(difficulty_dir) / "difficulty.parquet").records)
