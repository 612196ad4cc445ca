"""Tasks: offline difficulty estimate, keyed only by what changes it (reused across recipes).

With ``estimate_difficulty.shards: N > 1`` the flow submits N shard tasks (fan-out, placed by the
task runner) and then the stage task merges their estimates; the stage's key and payload do not
depend on N, so a sharded estimate and an unsharded one are cache hits for each other.
"""

from __future__ import annotations

from components.artifacts import ArtifactRef
from components.difficulty.config import DifficultyStageConfig
from components.stages import difficulty as stage
from tasks.common import GPU, execute, make_key, stage_task, store


def key_for(cfg: DifficultyStageConfig, model: ArtifactRef, dataset: ArtifactRef) -> str:
    return make_key("estimate_difficulty", stage.estimate_key_config(cfg), {"model": model, "dataset": dataset},
                    stage.__name__)


def shard_key(cfg: DifficultyStageConfig, shard: int, shards: int, model: ArtifactRef, dataset: ArtifactRef) -> str:
    conf = {**stage.estimate_key_config(cfg), "shard": shard, "shards": shards}
    return make_key("estimate_difficulty_shard", conf, {"model": model, "dataset": dataset}, stage.__name__)


@stage_task("estimate_difficulty_shard", key=shard_key, tags=GPU)
def difficulty_shard_task(run_id: str, cfg: DifficultyStageConfig, shard: int, shards: int, model: ArtifactRef,
                          dataset: ArtifactRef):
    st = store()
    model_dir, data_dir = st.local_path(model), st.local_path(dataset)
    return execute("estimate_difficulty_shard", shard_key(cfg, shard, shards, model, dataset), run_id,
                   {**stage.estimate_key_config(cfg), "shard": shard, "shards": shards}, "difficulty_shard",
                   lambda out, ctx: stage.run_shard(cfg, shard, shards, model_dir, data_dir, out, ctx))


@stage_task("estimate_difficulty", key=key_for, tags=GPU)
def difficulty_task(run_id: str, cfg: DifficultyStageConfig, model: ArtifactRef, dataset: ArtifactRef,
                    shards: list[ArtifactRef] | None = None):
    """``shards``: the shard tasks' estimates to merge (not in the key); none: estimate here."""
    st = store()
    data_dir = st.local_path(dataset)

    def body(out, ctx):
        if shards:
            return stage.merge([st.local_path(r) for r in shards], data_dir, out, ctx)
        return stage.run(cfg, st.local_path(model), data_dir, out, ctx)

    # Relative path by key only: the payload is shared by every recipe with the same key.
    return execute("estimate_difficulty", key_for(cfg, model, dataset), run_id, stage.estimate_key_config(cfg),
                   "difficulty", body)
