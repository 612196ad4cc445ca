"""What every stage task shares: cache keys, the MLflow child run, artifacts, Prefect artifacts.

A stage task receives its explicit cache ``key`` (computed by ``stage_key`` from the stage
config, upstream digests, code version and cache_version) plus handles; Prefect's
``cache_key_fn`` returns that key, so identical inputs are a cache hit across runs and
processes. Parameters that must not affect caching (the MLflow run id) are not in the key.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any, Callable

from prefect import task
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.states import State

from components.artifacts import ArtifactRef, ArtifactStore
from components.caching import stage_key
from components.settings import get_settings
from components.stages.context import StageContext, StageResult
from components.tracking import Tracker


def key_from_params(_context, parameters: dict) -> str:
    return parameters["key"]


def make_key(stage: str, config: dict, upstream: dict[str, ArtifactRef | str | None], modules) -> str:
    digests = {k: (v.sha256 if isinstance(v, ArtifactRef) else (v or "")) for k, v in upstream.items()}
    return stage_key(stage, config, digests, modules, get_settings().cache_version)


def store() -> ArtifactStore:
    s = get_settings()
    return ArtifactStore(s.artifact_uri, s.state_path / "cache", s.storage_options())


def tracker() -> Tracker:
    return Tracker(get_settings())


def _artifact_key(text: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:60] or "artifact"


def prefect_table(rows: list[dict], key: str, description: str) -> None:
    if rows:
        create_table_artifact(table=rows, key=_artifact_key(key), description=description)


def make_context(stage: str, run_id: str, trk: Tracker) -> StageContext:
    """A StageContext whose callbacks log to the stage's MLflow run and Prefect artifacts."""
    s = get_settings()
    progress_id: dict[str, Any] = {}

    def progress(msg: str, frac: float) -> None:
        pct = max(0.0, min(100.0, 100.0 * float(frac)))
        try:
            if "id" not in progress_id:
                progress_id["id"] = create_progress_artifact(
                    progress=pct, key=_artifact_key(f"{stage}-progress"), description=f"{stage}: {msg}"
                )
            else:
                update_progress_artifact(progress_id["id"], progress=pct, description=f"{stage}: {msg}")
        except Exception:  # progress display must never fail a stage
            pass

    def log_table(rows: list[dict], name: str) -> None:
        trk.log_table(run_id, rows, name)
        prefect_table(rows, f"{stage}-{Path(name).stem}", f"{stage}: {Path(name).stem}")

    return StageContext(
        device=s.resolved_device(),
        log_metrics=lambda m, step=None: trk.log_metrics(run_id, m, step),
        log_artifact=lambda p, ap=None: trk.log_artifact(run_id, p, ap),
        log_table=log_table,
        log_dataset=lambda d, name, digest, context: trk.log_dataset(run_id, d, name, digest, context),
        progress=progress,
        tracker=trk,
        extra={"state_dir": s.state_path},
    )


def execute(stage: str, key: str, run_id: str, config: dict, kind: str,
            body: Callable[[Path, StageContext], dict[str, float]], meta: dict | None = None,
            relpath: str | None = None, log_summary: bool = True) -> StageResult:
    """Run a stage body in a clean work folder, commit its output and log it to MLflow."""
    t0 = time.perf_counter()
    st, trk = store(), tracker()
    if log_summary:
        trk.log_params(run_id, config)
        trk.set_tags(run_id, {"cache_key": key, "cache_hit": "false"})
    ctx = make_context(stage, run_id, trk)
    work = st.workdir(relpath or f"{stage}/{key}")
    metrics = body(work, ctx)
    ref = st.commit(work, relpath or f"{stage}/{key}", kind=kind, meta=meta or {})
    seconds = time.perf_counter() - t0
    if log_summary:
        trk.log_metrics(run_id, {**metrics, "stage_seconds": seconds})
    info = {k: v for k, v in ctx.extra.items() if k not in ("state_dir",)}
    return StageResult(stage=stage, key=key, outputs={kind: ref}, metrics=metrics, seconds=seconds, info=info)


def stage_task(name: str, timeout_s: float | None = None):
    """Decorator: a Prefect task cached by its explicit ``key`` parameter, result persisted."""
    return task(
        name=name,
        cache_key_fn=key_from_params,
        persist_result=True,
        timeout_seconds=timeout_s,
        log_prints=True,
    )


def was_cached(state: State) -> bool:
    return state.name == "Cached"


def run_stage(task_fn, *, stage: str, key: str, parent_run_id: str, refresh: bool = False,
              run_name: str | None = None, **kwargs) -> tuple[StageResult, bool]:
    """Orchestration helper used by flows: child run, task call, cache-hit bookkeeping.

    On a cache hit the task body never runs, so the child run is tagged ``cache_hit=true``
    and given the cached figures here. A hit whose payload has vanished from the artifact
    store is recomputed.
    """
    trk = tracker()
    run_id = trk.start_run(run_name or stage, parent_run_id, tags={"stage": stage})
    fn = task_fn.with_options(refresh_cache=True) if refresh else task_fn
    try:
        state = fn(key=key, run_id=run_id, return_state=True, **kwargs)
        result: StageResult = state.result()
        cached = was_cached(state)
        if cached and not all(store().exists(r) for r in result.outputs.values()):
            state = task_fn.with_options(refresh_cache=True)(key=key, run_id=run_id, return_state=True, **kwargs)
            result, cached = state.result(), False
    except BaseException:
        trk.end_run(run_id, "FAILED")
        raise
    if cached:
        trk.set_tags(run_id, {"cache_hit": "true", "cache_key": key})
        trk.log_metrics(run_id, result.metrics)
    trk.end_run(run_id)
    result.info["mlflow_run_id"] = run_id
    result.info["cached"] = cached
    return result, cached
