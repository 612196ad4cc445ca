"""Task: register the chosen model with lineage tags, move aliases, optionally serve it."""

from __future__ import annotations

from components.artifacts import ArtifactRef
from components.stages import deploy as stage
from components.stages.evaluate import read_decision
from tasks.common import execute, make_key, stage_task, store


def key_for(cfg, evaluation: ArtifactRef, candidates: dict[str, ArtifactRef], lineage: dict) -> str:
    conf = {"deploy": cfg.model_dump(mode="json", exclude={"refresh"}), "lineage": lineage}
    upstream = {f"candidate:{n}": r for n, r in candidates.items()} | {"evaluation": evaluation}
    return make_key("deploy", conf, upstream, stage.__name__)


@stage_task("deploy")
def deploy_task(key: str, run_id: str, cfg: dict, evaluation: ArtifactRef, candidates: dict[str, ArtifactRef],
                lineage: dict, run_lineage: dict | None = None):
    """``lineage`` enters the cache key; ``run_lineage`` (flow run id) only tags the version."""
    from components.serving.config import DeployConfig

    c = DeployConfig.model_validate(cfg)
    st = store()
    decision = read_decision(st.local_path(evaluation))
    refs = {n: r.model_dump() for n, r in candidates.items()}

    def body(out, ctx):
        ctx.extra["local_paths"] = {n: str(st.local_path(r)) for n, r in candidates.items()}
        return stage.run(c, decision.get("chosen"), refs, {**lineage, **(run_lineage or {})}, decision, run_id, out, ctx)

    return execute("deploy", key, run_id, cfg, "deployment", body)
