"""Stage 1: curate the prompt pool into a versioned train/eval dataset."""

from __future__ import annotations

import json
from pathlib import Path

from components.data.curate import run_curation
from components.rewards import get_reward


def _verifier():
    cache: dict = {}

    def verify(task: str, answer: str, meta: dict) -> bool:
        fn = cache.get(task)
        if fn is None:
            fn = cache[task] = get_reward(task)
        return fn.can_verify(answer, meta)

    return verify


def run(cfg, model_dir: Path, out_dir: Path, ctx) -> dict[str, float]:
    from components.models import load_tokenizer

    tok = load_tokenizer(model_dir)
    result = run_curation(
        cfg, out_dir, verify=_verifier(),
        count_tokens=lambda text: len(tok(text, add_special_tokens=False)["input_ids"]),
        progress=ctx.progress,
    )
    ctx.log_table(result.filter_counts, "filter_counts.json")
    ctx.log_artifact(Path(result.card_path), None)
    ctx.log_artifact(Path(result.manifest_path), None)
    if Path(result.rejects_path).exists() and Path(result.rejects_path).stat().st_size:
        ctx.log_artifact(Path(result.rejects_path), None)
    ctx.log_dataset(Path(result.train_path), "curated-train", result.digest, "training")
    ctx.log_dataset(Path(result.eval_path), "curated-eval", result.digest, "evaluation")
    ctx.extra["filter_counts"] = result.filter_counts
    return {k: float(v) for k, v in result.metrics.items()}


def load_split(dataset_dir: Path, split: str) -> list[dict]:
    from components.data.curate import load_rows

    return load_rows(Path(dataset_dir) / split)


def dataset_digest(dataset_dir: Path) -> str:
    return json.loads((Path(dataset_dir) / "manifest.json").read_text()).get("digest", "")
