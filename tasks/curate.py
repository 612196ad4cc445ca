"""Task: curate the data pool into train/eval Parquet with a manifest and card."""

from __future__ import annotations

from components.artifacts import ArtifactRef
from components.data.config import CurateConfig
from components.stages import curate as stage
from tasks.common import execute, make_key, stage_task, store


def key_for(cfg: CurateConfig, model: ArtifactRef) -> str:
    # The tokenizer (length filter) is the only part of the model curation depends on,
    # but the model digest is a safe, simple stand-in.
    return make_key("curate", cfg.model_dump(mode="json", exclude={"refresh"}), {"model": model}, stage.__name__)


@stage_task("curate", key=key_for)
def curate_task(run_id: str, cfg: CurateConfig, model: ArtifactRef):
    model_dir = store().local_path(model)
    return execute("curate", key_for(cfg, model), run_id, cfg.model_dump(mode="json", exclude={"refresh"}),
                   "dataset", lambda out, ctx: stage.run(cfg, model_dir, out, ctx))
