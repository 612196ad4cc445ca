"""Task: prepare the base model checkpoint (the embedded SmolLM2 conversion runs once)."""

from __future__ import annotations

from pathlib import Path

from components.artifacts import sha256_dir
from components.models import ModelConfig
from components.stages import prepare_model as stage
from tasks.common import execute, make_key, stage_task


def key_for(cfg: ModelConfig) -> str:
    conf = cfg.model_dump(mode="json", exclude={"refresh"})
    upstream = {}
    src = Path(cfg.source).expanduser()
    if src.exists():  # a local folder: its content is an input
        upstream["source"] = sha256_dir(src)
    return make_key("prepare_model", conf, upstream, stage.__name__)


@stage_task("prepare_model", key=key_for)
def prepare_model_task(run_id: str, cfg: ModelConfig):
    return execute("prepare_model", key_for(cfg), run_id, cfg.model_dump(mode="json"), "model",
                   lambda out, ctx: stage.run(cfg, out, ctx), meta={"source": cfg.source})
