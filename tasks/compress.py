"""Task: one compression variant of the RL checkpoint (adding a variant recomputes only it)."""

from __future__ import annotations

from components.artifacts import ArtifactRef
from components.compression.config import VariantConfig
from components.stages import compress as stage
from tasks.common import GPU, execute, make_key, stage_task, store


def key_for(variant: VariantConfig, calib_n: int, seq_len: int, checkpoint: ArtifactRef, dataset: ArtifactRef) -> str:
    conf = {"variant": variant.model_dump(mode="json"), "calibration_samples": calib_n, "seq_len": seq_len}
    return make_key("compress", conf, {"checkpoint": checkpoint, "dataset": dataset}, stage.__name__)


@stage_task("compress", key=key_for, tags=GPU)
def compress_task(run_id: str, variant: VariantConfig, calib_n: int, seq_len: int, checkpoint: ArtifactRef,
                  dataset: ArtifactRef):
    st = store()
    ckpt_dir, data_dir = st.local_path(checkpoint), st.local_path(dataset)
    key = key_for(variant, calib_n, seq_len, checkpoint, dataset)
    return execute("compress", key, run_id, {"variant": variant.model_dump(mode="json"), "calibration_samples": calib_n},
                   "compressed",
                   lambda out, ctx: stage.run(variant, calib_n, seq_len, ckpt_dir / "model", data_dir, out, ctx),
                   meta={"variant": variant.name})
