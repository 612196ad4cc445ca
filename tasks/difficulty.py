"""Task: offline difficulty estimate, keyed only by what changes it (reused across recipes)."""

from __future__ import annotations

from components.artifacts import ArtifactRef
from components.stages import difficulty as stage
from tasks.common import GPU, execute, make_key, stage_task, store


def key_for(cfg, model: ArtifactRef, dataset: ArtifactRef) -> str:
    return make_key("estimate_difficulty", stage.estimate_key_config(cfg), {"model": model, "dataset": dataset},
                    stage.__name__)


@stage_task("estimate_difficulty", tags=GPU)
def difficulty_task(key: str, run_id: str, cfg: dict, model: ArtifactRef, dataset: ArtifactRef):
    from components.difficulty.config import DifficultyStageConfig

    c = DifficultyStageConfig.model_validate(cfg)
    st = store()
    model_dir, data_dir = st.local_path(model), st.local_path(dataset)
    # Relative path by key only: the payload is shared by every recipe with the same key.
    return execute("estimate_difficulty", key, run_id, stage.estimate_key_config(c), "difficulty",
                   lambda out, ctx: stage.run(c, model_dir, data_dir, out, ctx))
