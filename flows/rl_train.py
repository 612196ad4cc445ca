"""Subflow: RL training as a chain of cached segments.

Each segment's input is the previous segment's checkpoint digest, so a killed run started
again skips the finished segments (cache hits) and continues from the last checkpoint.
"""

from __future__ import annotations

from prefect import flow

from components.artifacts import ArtifactRef
from components.stages.context import StageResult
from components.stages.rl import segments
from tasks.common import reporting, tracker, was_cached
from tasks.rl import replay_history, rl_segment_task, segment_key


@flow(name="rl-train", log_prints=True)
def rl_train_flow(cfg: dict, selection: dict, model: ArtifactRef, dataset: ArtifactRef,
                  difficulty: ArtifactRef | None, parent_run_id: str, refresh: bool = False) -> StageResult:
    from components.difficulty.selection import SelectionConfig
    from components.recipe import RLConfig

    c, sel = RLConfig.model_validate(cfg), SelectionConfig.model_validate(selection)
    trk = tracker()
    run_id = trk.start_run("rl_train", parent_run_id, tags={"stage": "rl_train"})
    trk.log_params(run_id, {**cfg, "selection": selection})
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
            for start, end in segments(c):
                rep.span = (start / c.steps, end / c.steps)
                key = segment_key(c, sel, start, end, model, dataset, difficulty, prev)
                keys.append(key)
                fn = rl_segment_task.with_options(task_run_name=f"rl_segment[{start}-{end}]")
                fn = fn.with_options(refresh_cache=True) if refresh else fn
                state = fn(key=key, run_id=run_id, cfg=cfg, selection=selection, start=start, end=end, model=model,
                           dataset=dataset, difficulty=difficulty, prev=prev, return_state=True)
                res: StageResult = state.result()
                prev = res.outputs["checkpoint"]
                if was_cached(state):
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
