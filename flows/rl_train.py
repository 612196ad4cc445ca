"""Subflow: RL training as a chain of cached segments.

Each segment's input is the previous segment's checkpoint digest, so a killed run started
again skips the finished segments (cache hits) and continues from the last checkpoint.
"""

from __future__ import annotations

from prefect import flow

from components.artifacts import ArtifactRef
from components.difficulty.selection import SelectionConfig
from components.recipe import RLConfig
from components.stages.context import StageResult
from components.stages.rl import segments
from tasks.common import call_stage_task, reporting, tracker
from tasks.rl import replay_history, rl_segment_task


@flow(name="rl-train", log_prints=True)
def rl_train_flow(cfg: RLConfig, selection: SelectionConfig, model: ArtifactRef, dataset: ArtifactRef,
                  difficulty: ArtifactRef | None, parent_run_id: str, refresh: bool = False) -> StageResult:
    trk = tracker()
    run_id = trk.start_run("rl_train", parent_run_id, tags={"stage": "rl_train"})
    trk.log_params(run_id, {**cfg.model_dump(mode="json", exclude={"refresh"}),
                            "selection": selection.model_dump(mode="json")})
    prev: ArtifactRef | None = None
    all_cached = True
    n_cached = 0
    seconds = 0.0
    metrics: dict[str, float] = {}
    keys = []
    # One report for the whole stage (the parent flow usually opened it around this subflow):
    # each segment's 0..1 progress is mapped onto its share of the steps.
    with reporting("rl_train") as (rep, owner):
        try:
            for start, end in segments(cfg):
                rep.span = (start / cfg.steps, end / cfg.steps)
                res, hit = call_stage_task(rl_segment_task, f"rl_segment:{start}-{end}", run_id, refresh,
                                           cfg=cfg, selection=selection, start=start, end=end, model=model,
                                           dataset=dataset, difficulty=difficulty, prev=prev)
                keys.append(res.key)
                prev = res.outputs["checkpoint"]
                if hit:
                    n_cached += 1
                    replay_history(run_id, prev, start, end)
                    rep.update(f"segment {start}-{end} cached", 1.0)
                else:
                    all_cached = False
                    seconds += res.seconds
                metrics = res.metrics
        except BaseException:
            trk.end_run(run_id, "FAILED")
            raise
        if owner:
            rep.end(all_cached, {**metrics, "segments": float(len(keys)), "segments_cached": float(n_cached)})
    if prev is None:
        raise ValueError("rl_train.steps is 0: nothing to train")
    trk.set_tags(run_id, {"cache_hit": str(all_cached).lower(), "segments": len(keys)})
    trk.log_metrics(run_id, {f"final.{k}": v for k, v in metrics.items()})
    trk.end_run(run_id)
    metrics = {**metrics, "segments": float(len(keys)), "segments_cached": float(n_cached)}
    return StageResult(stage="rl_train", key=keys[-1], outputs={"checkpoint": prev}, metrics=metrics,
                       seconds=seconds, info={"cached": all_cached, "mlflow_run_id": run_id, "segments": keys})
