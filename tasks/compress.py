"""Task: one compression variant of the RL checkpoint (adding a variant recomputes only it)."""

from __future__ import annotations

from components.artifacts import ArtifactRef
from components.stages import compress as stage
from tasks.common import GPU, execute, make_key, stage_task, store


def key_for(variant, calib_n: int, seq_len: int, checkpoint: ArtifactRef, dataset: ArtifactRef) -> str:
    conf = {"variant": variant.model_dump(mode="json"), "calibration_samples": calib_n, "seq_len": seq_len}
    return make_key("compress", conf, {"checkpoint": checkpoint, "dataset": dataset}, stage.__name__)


@stage_task("compress", tags=GPU)
def compress_task(key: str, run_id: str, variant: dict, calib_n: int, seq_len: int, checkpoint: ArtifactRef,
                  dataset: ArtifactRef):
    from components.compression.config import VariantConfig

    v = VariantConfig.model_validate(variant)
    st = store()
    ckpt_dir, data_dir = st.local_path(checkpoint), st.local_path(dataset)
    return execute("compress", key, run_id, {"variant": variant, "calibration_samples": calib_n}, "compressed",
                   lambda out, ctx: stage.run(v, calib_n, seq_len, ckpt_dir / "model", data_dir, out, ctx),
                   meta={"variant": v.name})
