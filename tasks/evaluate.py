"""Task: evaluate all candidates (and the serving champion) and run the promotion gate."""

from __future__ import annotations

from components.artifacts import ArtifactRef
from components.stages import evaluate as stage
from tasks.common import GPU, execute, make_key, stage_task, store


def key_for(cfg, dataset: ArtifactRef, candidates: dict[str, ArtifactRef], champion_sha: str | None) -> str:
    upstream = {f"candidate:{n}": r for n, r in candidates.items()}
    upstream["dataset"] = dataset
    upstream["champion"] = champion_sha
    return make_key("evaluate", cfg.model_dump(mode="json", exclude={"refresh"}), upstream, stage.__name__)


@stage_task("evaluate", tags=GPU)
def evaluate_task(key: str, run_id: str, cfg: dict, dataset: ArtifactRef, candidates: dict[str, ArtifactRef],
                  champion: ArtifactRef | None = None, champion_is: str | None = None):
    from components.evaluation.config import EvaluateConfig

    c = EvaluateConfig.model_validate(cfg)
    st = store()
    paths = {n: st.local_path(r) for n, r in candidates.items()}
    champ = ("champion", st.local_path(champion)) if champion is not None else None
    return execute("evaluate", key, run_id, cfg, "evaluation",
                   lambda out, ctx: stage.run(c, paths, st.local_path(dataset), out, ctx, champion=champ,
                                              champion_is=champion_is))
