"""Task: register the chosen model with lineage tags, move aliases, optionally serve it."""

from __future__ import annotations

from components.artifacts import ArtifactRef
from components.serving.config import DeployConfig
from components.stages import deploy as stage
from components.stages.evaluate import read_decision
from tasks.common import execute, make_key, stage_task, store


def key_for(cfg: DeployConfig, evaluation: ArtifactRef, candidates: dict[str, ArtifactRef], lineage: dict) -> str:
    conf = {"deploy": cfg.model_dump(mode="json", exclude={"refresh"}), "lineage": lineage}
    upstream = {f"candidate:{n}": r for n, r in candidates.items()} | {"evaluation": evaluation}
    return make_key("deploy", conf, upstream, stage.__name__)


@stage_task("deploy", key=key_for)
def deploy_task(run_id: str, cfg: DeployConfig, evaluation: ArtifactRef, candidates: dict[str, ArtifactRef],
                lineage: dict, run_lineage: dict | None = None):
    """``lineage`` enters the cache key; ``run_lineage`` (flow run id) only tags the version."""
    st = store()
    decision = read_decision(st.local_path(evaluation))
    refs = {n: r.model_dump() for n, r in candidates.items()}

    def body(out, ctx):
        ctx.extra["local_paths"] = {n: str(st.local_path(r)) for n, r in candidates.items()}
        return stage.run(cfg, decision.get("chosen"), refs, {**lineage, **(run_lineage or {})}, decision, run_id, out, ctx)

    return execute("deploy", key_for(cfg, evaluation, candidates, lineage), run_id,
                   cfg.model_dump(mode="json", exclude={"refresh"}), "deployment", body)
