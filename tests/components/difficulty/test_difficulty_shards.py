"""Difficulty shards: any sharding of the estimate merges to the unsharded payload (same digest),
because a prompt's samples depend only on its block of ``batch_prompts`` prompts and the seed."""

from __future__ import annotations

import pytest

from components.artifacts import sha256_dir
from components.data.config import CurateConfig
from components.difficulty.config import DifficultyStageConfig
from components.stages import curate
from components.stages import difficulty as stage
from components.stages.context import StageContext


@pytest.fixture(scope="module")
def dataset(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    cfg = CurateConfig.model_validate({"sources": [{"type": "arithmetic", "name": "arith", "n": 40, "digits": 1,
                                                    "operators": ["+"], "num_ops": 1, "seed": 0}],
                                       "eval_fraction": 0.2, "seed": 0})
    curate.run(cfg, tiny_model_dir, out, StageContext())
    return out


def test_shard_rows_cover_every_row_once_in_whole_blocks():
    parts = [stage.shard_rows(23, 4, k, 3) for k in range(3)]
    assert sorted(i for p in parts for i in p) == list(range(23))
    for k, p in enumerate(parts):
        assert {i // 4 % 3 for i in p} == {k}
    with pytest.raises(ValueError, match="not in 0..2"):
        stage.shard_rows(23, 4, 3, 3)


def test_three_shards_merge_to_the_unsharded_payload(tiny_model_dir, dataset, tmp_path):
    # Sequential stopping on: prompts leave their block's generation calls at different rounds.
    cfg = DifficultyStageConfig(max_new_tokens=4, samples_per_round=2, min_samples=2, max_samples=8, batch_prompts=4,
                                buckets={"unsolved_max": 0.5, "learnable_min": 0.6, "easy_min": 0.9,
                                         "solved_min": 0.95})
    whole = stage.run(cfg, tiny_model_dir, dataset, tmp_path / "whole", StageContext())
    shard_dirs = []
    for k in range(3):
        shard_dirs.append(tmp_path / f"shard{k}")
        stage.run_shard(cfg, k, 3, tiny_model_dir, dataset, shard_dirs[-1], StageContext())
    merged = stage.merge(shard_dirs, dataset, tmp_path / "merged", StageContext())
    assert 0 < whole["stopped_early"] < whole["prompts"], whole  # early stops really happened
    assert merged == whole
    assert sha256_dir(tmp_path / "merged") == sha256_dir(tmp_path / "whole")
    with pytest.raises(ValueError, match="cover"):
        stage.merge(shard_dirs[:2], dataset, tmp_path / "partial", StageContext())
