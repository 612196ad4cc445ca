"""The end-to-end flow: prepare_model -> curate -> estimate_difficulty -> rl_train -> compress
-> evaluate -> deploy. Each stage is a cached task; this module only chains them.

Run it as ``posttrain run --recipe smoke`` or ``python -m flows.post_training --recipe smoke``.
"""

from __future__ import annotations

from components.settings import configure_process_env, get_settings

configure_process_env()

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from prefect import flow, get_run_logger  # noqa: E402
from prefect.artifacts import create_link_artifact, create_markdown_artifact  # noqa: E402
from prefect.runtime import flow_run  # noqa: E402
from pydantic import ValidationError  # noqa: E402

from components import runowners  # noqa: E402
from components.champion import resolve_champion  # noqa: E402
from components.gc import storage_summary  # noqa: E402
from components.recipe import (  # noqa: E402
    STAGES,
    Recipe,
    RecipeError,
    apply_override,
    format_validation_error,
    load_recipe,
)
from components.run_params import Override, StageName, recipe_choices, recipe_name_type  # noqa: E402
from components.stages.context import StageResult  # noqa: E402
from components.summary import build_summary, headline_metrics, markdown_summary  # noqa: E402
from flows.rl_train import rl_train_flow  # noqa: E402
from tasks import compress as compress_t  # noqa: E402
from tasks import curate as curate_t  # noqa: E402
from tasks import deploy as deploy_t  # noqa: E402
from tasks import difficulty as difficulty_t  # noqa: E402
from tasks import evaluate as evaluate_t  # noqa: E402
from tasks import prepare_model as model_t  # noqa: E402
from tasks.common import announce_run, reporting, run_stage, run_stages, store, tracker  # noqa: E402
from tasks.executor import ExecutorTaskRunner, check_executor  # noqa: E402
from tasks.reconcile import reconcile  # noqa: E402


def _wanted(stages: list[str] | None) -> int:
    """Index of the last stage to run: every upstream stage runs too (usually a cache hit)."""
    if not stages:
        return len(STAGES) - 1
    bad = [s for s in stages if s not in STAGES]
    if bad:
        raise ValueError(f"unknown stage(s) {bad}; allowed: {list(STAGES)}")
    return max(STAGES.index(s) for s in stages)


def _champion(rec: Recipe, candidates: dict) -> tuple:
    """The registry's champion: (ref, None), or (None, name) when it is one of this run's
    candidates (same payload digest), or (None, None) when there is none or it is unreachable."""
    champ = resolve_champion(tracker(), store(), rec.deploy.registered_model_name)
    if champ is None:
        return None, None
    for name, ref in candidates.items():
        if champ.ref.sha256 == ref.sha256:
            return None, name
    return champ.ref, None


def _reconcile(log) -> None:
    """Mark what killed runs of this machine left RUNNING as crashed; never fails the run."""
    try:
        for line in reconcile(repair=True).lines()[:20]:
            if not line.startswith("nothing to repair"):
                log.warning("reconcile: %s", line)
    except Exception as e:  # noqa: BLE001 - bookkeeping of older runs must not stop this one
        log.warning("reconcile of earlier runs failed: %s: %s", type(e).__name__, e)


def _storage(summary: dict, results: dict, since: float) -> None:
    """Add the payloads this run needs (for ``posttrain gc``) and the bytes it wrote."""
    s = get_settings()
    if not s.remote_root:
        summary.update(storage_summary(Path(s.artifact_uri.removeprefix("file://")), results, since))


def _close(trk, parent: str, summary: dict, status: str, log, add_storage, results: dict) -> None:
    """End the parent run. Runs in the flow's ``finally``: an error here is logged, never raised,
    so the error that stopped the run is the one the user sees."""
    try:
        add_storage()
        trk.log_metrics(parent, {"flow_seconds": summary["seconds"], **headline_metrics(results),
                                 **{f"{k}.seconds": v["seconds"] for k, v in summary["stages"].items()}})
        _reward_curve_to_parent(trk, parent, results.get("rl_train"))
        trk.log_text(parent, json.dumps(summary, indent=2, default=str), "summary.json")
    except Exception as e:  # noqa: BLE001
        log.warning("could not log the run summary: %s: %s", type(e).__name__, e)
    try:
        trk.end_run(parent, status)
    except Exception as e:  # noqa: BLE001
        log.warning("could not end MLflow run %s: %s: %s", parent, type(e).__name__, e)
    try:
        create_markdown_artifact(markdown=markdown_summary(summary, trk.run_url(parent)), key="run-summary",
                                 description="posttrain run summary")
    except Exception:  # noqa: BLE001
        pass


# The UI form's recipe drop-down: built-in recipes and the files under POSTTRAIN_RECIPES_DIR.
RecipeName = recipe_name_type(recipe_choices())


def resolve_recipe(recipe: str, config: Recipe | None, overrides: list[str] | None) -> Recipe:
    """The run's recipe: ``config`` (a form filled in the Prefect UI) wins over the ``recipe`` name;
    ``overrides`` apply to either, with the same validation as ``--set``."""
    if config is None:
        return load_recipe(recipe, overrides or [])
    raw = config.model_dump(mode="json")
    for o in overrides or []:
        apply_override(raw, o)
    try:
        return Recipe.model_validate(raw)
    except ValidationError as e:  # one line in the Prefect UI's state message
        raise RecipeError("; ".join(x.strip() for x in format_validation_error(e).splitlines())) from None


# Fan-out tasks run where POSTTRAIN_EXECUTOR of the process running the flow says (one at a time
# locally, or on the Ray cluster), however the run was started: tasks.executor decides.
@flow(name="post-training", log_prints=True, task_runner=ExecutorTaskRunner())
def post_training(recipe: RecipeName = "smoke", overrides: list[Override] | None = None,
                  stages: list[StageName] | None = None, config: Recipe | None = None) -> dict:
    """Base model + prompts -> curated data, difficulty, GRPO, compression, gated deployment.

    Args:
        recipe: built-in recipe name or a YAML file under the recipes folder (a path on the
            worker from the CLI); ignored when config is given.
        overrides: recipe field overrides as key=value, e.g. rl_train.steps=20 (values parsed as
            YAML); they apply to config too.
        stages: run up to the last of these stages; upstream stages run too, usually as cache
            hits. Empty: all stages.
        config: a whole recipe as a form, pre-filled from the deployment's recipe; when given it
            replaces the named recipe (choose None to run the recipe by name).
    """
    t_start, wall_start = time.perf_counter(), time.time()
    check_executor()  # a missing or unreachable Ray cluster: one line, before any stage
    rec = resolve_recipe(recipe, config, overrides)
    last = _wanted(stages)
    log = get_run_logger()
    fr_id = str(flow_run.get_id() or "local")
    state_dir = get_settings().state_path
    runowners.record(state_dir, flow_run=fr_id)
    _reconcile(log)
    trk = tracker()
    parent = trk.start_run(f"{rec.name}-{flow_run.get_name() or 'run'}", tags={
        "prefect.flow_run_id": fr_id, "recipe": rec.name, "recipe_digest": rec.digest()})
    runowners.record(state_dir, mlflow_run=parent)
    trk.log_params(parent, {"recipe": rec.model_dump(mode="json")})
    try:
        create_link_artifact(link=trk.run_url(parent), link_text="MLflow run", key="mlflow-run",
                             description="MLflow parent run of this flow run")
    except Exception:
        pass
    announce_run(rec.name, trk.run_url(parent))
    results: dict[str, StageResult] = {}
    cached: dict[str, bool] = {}

    def stage(name: str, task_fn, refresh: bool, **inputs) -> StageResult:
        res, hit = run_stage(task_fn, stage=name, parent_run_id=parent, refresh=refresh, **inputs)
        results[name], cached[name] = res, hit
        return res

    def fan_out(task_fn, refresh: bool, jobs: list[tuple[str, dict]]) -> list[StageResult]:
        done = run_stages(task_fn, jobs, parent_run_id=parent, refresh=refresh)
        for (name, _inputs), (res, hit) in zip(jobs, done):
            results[name], cached[name] = res, hit
        return [res for res, _hit in done]

    status = "FAILED"
    try:
        _chain(rec, last, stage, fan_out, results, cached, {"prefect_flow_run_id": fr_id, "mlflow_parent_run_id": parent})
        status = "FINISHED"
    finally:
        summary = build_summary(fr_id, parent, results, cached, time.perf_counter() - t_start)
        _close(trk, parent, summary, status, log, lambda: _storage(summary, results, wall_start), results)
        try:
            runowners.release(state_dir, flow_run=fr_id, mlflow_run=parent)
        except OSError as e:
            log.warning("could not remove this run's owner record: %s", e)
    return summary


def _chain(rec: Recipe, last: int, stage, fan_out, results: dict, cached: dict, run_lineage: dict) -> None:
    """The stages in order, up to stage index ``last``; ``stage`` runs one cached task, ``fan_out``
    submits independent ones (difficulty shards, compression variants, evaluation passes)."""
    model = stage("prepare_model", model_t.prepare_model_task, rec.model.refresh, cfg=rec.model).outputs["model"]
    dataset = stage("curate", curate_t.curate_task, rec.curate.refresh, cfg=rec.curate, model=model).outputs["dataset"]
    difficulty = None
    if last >= 1 and rec.estimate_difficulty.enabled:
        difficulty = _difficulty(rec, stage, fan_out, model, dataset)
    if last >= 2:
        with reporting("rl_train") as (rep, _owner):  # the subflow reports into this one
            r = rl_train_flow(cfg=rec.rl_train, selection=rec.estimate_difficulty.selection, model=model,
                              dataset=dataset, difficulty=difficulty, parent_run_id=run_lineage["mlflow_parent_run_id"],
                              refresh=rec.rl_train.refresh)
            results["rl_train"], cached["rl_train"] = r, bool(r.info.get("cached"))
            rep.end(cached["rl_train"], r.metrics, r.info)
        checkpoint = r.outputs["checkpoint"]
        candidates = {"base": model, "rl": checkpoint}
        if last >= 3:
            variants = fan_out(compress_t.compress_task, rec.compress.refresh, [
                (f"compress:{v.name}", dict(variant=v, calib_n=rec.compress.calibration_samples,
                                            seq_len=rec.compress.calibration_seq_len, checkpoint=checkpoint,
                                            dataset=dataset)) for v in rec.compress.variants])
            candidates.update({v.name: c.outputs["compressed"] for v, c in zip(rec.compress.variants, variants)})
        if last >= 4:
            ev = _evaluate(rec, stage, fan_out, dataset, candidates)
            if last >= 5:
                lineage = {
                    "recipe": rec.name, "recipe_digest": rec.digest(), "dataset_sha256": dataset.sha256,
                    "difficulty_sha256": difficulty.sha256 if difficulty else "",
                    "rl_checkpoint_sha256": checkpoint.sha256, "base_model_sha256": model.sha256,
                    **{f"eval.{k}": round(v, 4) for k, v in ev.metrics.items() if not k.startswith("champion.")},
                }
                stage("deploy", deploy_t.deploy_task, rec.deploy.refresh, cfg=rec.deploy,
                      evaluation=ev.outputs["evaluation"], candidates=candidates, lineage=lineage,
                      run_lineage=run_lineage)


def _difficulty(rec: Recipe, stage, fan_out, model, dataset):
    """The estimate: in one task, or ``shards`` shard tasks and a merge (same key, same payload)."""
    cfg = rec.estimate_difficulty
    shards = None
    if cfg.shards > 1:
        parts = fan_out(difficulty_t.difficulty_shard_task, cfg.refresh, [
            (f"estimate_difficulty:shard-{i}-of-{cfg.shards}", dict(cfg=cfg, shard=i, shards=cfg.shards, model=model,
                                                                    dataset=dataset)) for i in range(cfg.shards)])
        shards = [p.outputs["difficulty_shard"] for p in parts]
    return stage("estimate_difficulty", difficulty_t.difficulty_task, cfg.refresh, cfg=cfg, model=model,
                 dataset=dataset, shards=shards).outputs["difficulty"]


def _evaluate(rec: Recipe, stage, fan_out, dataset, candidates: dict):
    """One pass task per model (candidates and a champion from the registry), then the gate."""
    # A champion that is one of this run's candidates adds no new evidence, so it
    # does not change evaluate's key (the rerun of an unchanged recipe is a cache hit).
    champ, champ_is = _champion(rec, candidates)
    models = {**candidates, **({"champion": champ} if champ is not None else {})}
    done = fan_out(evaluate_t.evaluate_passes_task, rec.evaluate.refresh, [
        (f"evaluate_passes:{name}", dict(cfg=rec.evaluate, name=name, model=ref, dataset=dataset))
        for name, ref in models.items()])
    passes = {name: d.outputs["evaluation_passes"] for name, d in zip(models, done)}
    return stage("evaluate", evaluate_t.evaluate_task, rec.evaluate.refresh, cfg=rec.evaluate, dataset=dataset,
                 candidates=candidates, champion=champ, champion_is=champ_is, passes=passes)


def _reward_curve_to_parent(trk, parent: str, rl: StageResult | None) -> None:
    """The parent run's first chart: the RL reward per step (copied from the rl_train run)."""
    if rl is not None and rl.info.get("mlflow_run_id"):
        trk.copy_metric(rl.info["mlflow_run_id"], "reward_mean", parent, "reward/mean")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m flows.post_training")
    p.add_argument("--recipe", default="smoke")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--stages", default=None)
    p.add_argument("--summary", default=None)
    a = p.parse_args(argv)
    s = post_training(recipe=a.recipe, overrides=a.overrides, stages=a.stages.split(",") if a.stages else None)
    if a.summary:
        with open(a.summary, "w") as f:
            json.dump(s, f, indent=2, default=str)
    print(json.dumps({k: s[k] for k in ("flow_run_id", "mlflow_run_id")}, indent=2))


if __name__ == "__main__":
    main()
