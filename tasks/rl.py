"""Tasks: RL training as a chain of cached segments (each resumes from the previous one)."""

from __future__ import annotations

from components.artifacts import ArtifactRef
from components.difficulty.selection import SelectionConfig
from components.rl.config import RLConfig
from components.stages import rl as stage
from components.summary import RL_HEADLINE, with_aliases
from tasks.common import GPU, execute, make_key, stage_task, store


def segment_key(cfg: RLConfig, selection: SelectionConfig, start: int, end: int, model: ArtifactRef,
                dataset: ArtifactRef, difficulty: ArtifactRef | None, prev: ArtifactRef | None) -> str:
    conf = {"rl": cfg.model_dump(mode="json", exclude={"refresh"}),
            "selection": selection.model_dump(mode="json"), "segment": [start, end]}
    return make_key("rl_segment", conf, {"model": model, "dataset": dataset, "difficulty": difficulty,
                                         "prev": prev}, stage.__name__)


@stage_task("rl_segment", key=segment_key, tags=GPU)
def rl_segment_task(run_id: str, cfg: RLConfig, selection: SelectionConfig, start: int, end: int,
                    model: ArtifactRef, dataset: ArtifactRef, difficulty: ArtifactRef | None,
                    prev: ArtifactRef | None):
    st = store()
    paths = {n: (st.local_path(r) if r is not None else None)
             for n, r in {"model": model, "dataset": dataset, "difficulty": difficulty, "prev": prev}.items()}
    conf = {"segment_start": start, "segment_end": end}
    return execute(
        "rl_train", segment_key(cfg, selection, start, end, model, dataset, difficulty, prev), run_id, conf,
        "checkpoint",
        lambda out, ctx: stage.run(cfg, selection, paths["model"], paths["dataset"], paths["difficulty"],
                                   paths["prev"], start, end, out, ctx),
        meta={"step": end}, log_summary=False, metric_aliases=RL_HEADLINE,
    )


def replay_history(run_id: str, checkpoint: ArtifactRef, start: int, end: int) -> None:
    """A cached segment's per-step metrics, logged again so the reward curve is whole."""
    from components.rl.segment import read_history
    from tasks.common import tracker

    trk = tracker()
    for h in read_history(store().local_path(checkpoint)):
        if start <= h["step"] < end:
            step = h.pop("step")
            trk.log_metrics(run_id, with_aliases(h, RL_HEADLINE), step)
