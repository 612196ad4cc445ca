"""Task: offline difficulty estimate, keyed only by what changes it (reused across recipes)."""

from __future__ import annotations

from components.artifacts import ArtifactRef
from components.difficulty.config import DifficultyStageConfig
from components.stages import difficulty as stage
from tasks.common import GPU, execute, make_key, stage_task, store


def key_for(cfg: DifficultyStageConfig, model: ArtifactRef, dataset: ArtifactRef) -> str:
    return make_key("estimate_difficulty", stage.estimate_key_config(cfg), {"model": model, "dataset": dataset},
                    stage.__name__)


@stage_task("estimate_difficulty", key=key_for, tags=GPU)
def difficulty_task(run_id: str, cfg: DifficultyStageConfig, model: ArtifactRef, dataset: ArtifactRef):
    st = store()
    model_dir, data_dir = st.local_path(model), st.local_path(dataset)
    # Relative path by key only: the payload is shared by every recipe with the same key.
    return execute("estimate_difficulty", key_for(cfg, model, dataset), run_id, stage.estimate_key_config(cfg),
                   "difficulty", lambda out, ctx: stage.run(cfg, model_dir, data_dir, out, ctx))
