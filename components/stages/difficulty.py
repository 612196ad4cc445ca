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

from components.difficulty.estimate import EstimateConfig, EstimateResult, estimate_difficulty
from components.difficulty.report import bucket_table, plot_pass_rate_histogram
from components.engines.base import SamplingParams
from components.engines.transformers_engine import engine_for
from components.prompts import messages_for
from components.rewards import get_reward
from components.rl.env_rollouts import run_groups
from components.scoring import RewardScorer
from components.stages.curate import load_split

# Fields that do not change the estimate. ``shards`` only splits the work: a prompt's samples
# depend on its block (``batch_prompts`` consecutive curated prompts, one generation call per
# round) and the seed, never on the shard its block landed in, so any shard count gives the same
# payload. ``batch_prompts`` does change the samples (it is the block) and stays in the key.
SELECTION_FIELDS = ("selection", "enabled", "shards")


def estimate_key_config(cfg, rows_tasks: set[str] | None = None) -> dict:
    """Only what changes the estimate enters its key; reward versions are added by task name."""
    d = cfg.model_dump(mode="json")
    for f in SELECTION_FIELDS + ("refresh",):
        d.pop(f, None)
    tasks = sorted(rows_tasks or {"numeric", "countdown"})
    d["reward_versions"] = {t: get_reward(t).version for t in tasks}
    return d


TOOL_CALLS = "tool_calls.json"  # a shard's episodes with / without a tool call


def shard_rows(n_rows: int, batch_prompts: int, shard: int, shards: int) -> list[int]:
    """Row indices of shard ``shard`` of ``shards``: whole blocks of ``batch_prompts`` rows, dealt
    round-robin (block b goes to shard b % shards), so shards stay balanced."""
    if not 0 <= shard < shards:
        raise ValueError(f"shard {shard} is not in 0..{shards - 1}")
    return [i for i in range(n_rows) if (i // batch_prompts) % shards == shard]


def block_seed(seed: int, block: int, round_index: int) -> int:
    """The sampling seed of one block's generation call in one round (rounds < 10_007)."""
    return (seed * 1_000_003 + block) * 10_007 + round_index


def estimate_rows(cfg, rows: list[dict], row_indices: list[int], model_dir: Path, ctx,
                  dtype=torch.float32) -> tuple[EstimateResult, Counter[bool]]:
    """The estimate of the rows at ``row_indices`` (whole blocks): each round generates once per
    block with that block's still-active prompts and the block's own seed. Also returns the count
    of episodes with / without a tool call (empty without an environment)."""
    from components.models import load_model, load_tokenizer

    model = load_model(model_dir, ctx.device, dtype)
    engine = engine_for(model, load_tokenizer(model_dir), "difficulty")
    scorer = RewardScorer()
    calls: Counter[bool] = Counter()  # episodes with / without a tool call

    def sample_fn(indices: list[int], n: int, round_index: int) -> list[list[float]]:
        by_block: dict[int, list[int]] = {}
        for i in indices:
            by_block.setdefault(row_indices[i] // cfg.batch_prompts, []).append(i)
        rewards: dict[int, list[float]] = {}
        for block, members in by_block.items():
            part = [rows[row_indices[i]] for i in members]
            params = SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens,
                                    seed=block_seed(cfg.seed, block, round_index))
            if cfg.environment is not None:  # pass rates through the environment's episodes
                groups, _pids, _s = run_groups(engine, cfg.environment, part, [n] * len(part), params)
                for i, g in zip(members, groups):
                    rewards[i] = [float(smp.reward or 0.0) for smp in g]
                calls.update(bool((smp.episode or {}).get("tool_calls")) for g in groups for smp in g)
                continue
            batch = engine.generate([messages_for(r) for r in part], n, params)
            for i, r, g in zip(members, part, batch.groups):
                rewards[i] = [scorer(r, smp.text) for smp in g]
        return [rewards[i] for i in indices]

    n_rows = max(1, len(row_indices))

    def progress(d: dict) -> None:
        ctx.progress(f"round {d.get('round')}: {d.get('finished')}/{n_rows} prompts settled, "
                     f"{d.get('samples_used')} samples", float(d.get("finished", 0)) / n_rows)

    est_cfg = EstimateConfig.model_validate(cfg.model_dump(include=set(EstimateConfig.model_fields)))
    return estimate_difficulty([rows[i]["id"] for i in row_indices], sample_fn, est_cfg, progress=progress), calls


def merge_results(rows: list[dict], parts: list[EstimateResult]) -> EstimateResult:
    """One estimate from shard estimates: records in curated-row order, sample counts summed."""
    by_id = {r.id: r for p in parts for r in p.records}
    missing = [row["id"] for row in rows if row["id"] not in by_id]
    if missing or len(by_id) != len(rows):
        raise ValueError(f"the shards cover {len(by_id)} of {len(rows)} prompts (missing e.g. {missing[:3]})")
    cfg = parts[0].config if parts else EstimateConfig()
    return EstimateResult(records=[by_id[row["id"]] for row in rows],
                          samples_used=sum(p.samples_used for p in parts),
                          samples_fixed_k=sum(p.samples_fixed_k for p in parts), config=cfg)


def run_shard(cfg, shard: int, shards: int, model_dir: Path, dataset_dir: Path, out_dir: Path, ctx,
              dtype=torch.float32) -> dict[str, float]:
    """One shard's estimate, as ``difficulty.parquet`` in ``out_dir`` (merged by ``merge``)."""
    rows = load_split(dataset_dir, "train")
    result, calls = estimate_rows(cfg, rows, shard_rows(len(rows), cfg.batch_prompts, shard, shards), model_dir,
                                  ctx, dtype)
    result.to_parquet(out_dir / "difficulty.parquet")
    (out_dir / TOOL_CALLS).write_text(json.dumps({"with": calls[True], "without": calls[False]}))
    return {"prompts": float(len(result.records)), "samples_used": float(result.samples_used)}


def run(cfg, model_dir: Path, dataset_dir: Path, out_dir: Path, ctx, dtype=torch.float32) -> dict[str, float]:
    """The whole estimate in this process (the payload equals ``merge`` of any sharding)."""
    rows = load_split(dataset_dir, "train")
    return write_estimate(*estimate_rows(cfg, rows, list(range(len(rows))), model_dir, ctx, dtype), rows, out_dir, ctx)


def merge(shard_dirs: list[Path], dataset_dir: Path, out_dir: Path, ctx) -> dict[str, float]:
    """The stage's payload from the shards' estimates (each a folder with ``difficulty.parquet``)."""
    from components.difficulty.estimate import read_parquet

    rows = load_split(dataset_dir, "train")
    parts = [read_parquet(Path(d) / "difficulty.parquet") for d in shard_dirs]
    calls: Counter[bool] = Counter()
    for d in shard_dirs:
        if (Path(d) / TOOL_CALLS).exists():
            c = json.loads((Path(d) / TOOL_CALLS).read_text())
            calls.update({True: c["with"], False: c["without"]})
    return write_estimate(merge_results(rows, parts), +calls, rows, out_dir, ctx)


def write_estimate(result: EstimateResult, calls: Counter[bool], rows: list[dict], out_dir: Path,
                   ctx) -> dict[str, float]:
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
