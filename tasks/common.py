"""What every stage task shares: cache keys, the MLflow child run, artifacts, Prefect artifacts.

A stage task receives its explicit cache ``key`` (computed by ``stage_key`` from the stage
config, upstream digests, code version and cache_version) plus handles; its cache policy
returns that key, so identical inputs are a cache hit across runs and processes. Parameters
that must not affect caching (the MLflow run id) are not in the key.

Two runs that reach the same key at once do the work once: the policy runs each stage in a
SERIALIZABLE transaction whose lock is a file in the state folder, so the second run waits and
then reads the first one's result as a cache hit. With an ``s3://`` artifact root, Prefect's
result records (the cache) live in the bucket too, so another machine with an empty state
folder finds them.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from pathlib import Path
from typing import Any, Callable

from prefect import Task
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.cache_policies import CacheKeyFnPolicy
from prefect.filesystems import RemoteFileSystem
from prefect.settings import get_current_settings
from prefect.states import State
from prefect.transactions import IsolationLevel

from components.artifacts import ArtifactRef, ArtifactStore
from components.caching import stage_key
from components.settings import export_s3_env, get_settings
from components.stages.context import StageContext, StageResult
from components.tracking import Tracker
from tasks.locks import StateLockManager


def key_from_params(_context, parameters: dict) -> str:
    return parameters["key"]


def make_key(stage: str, config: dict, upstream: dict[str, ArtifactRef | str | None], module: str) -> str:
    """``module``: the stage module (components.stages.X); its code version is derived from its imports."""
    digests = {k: (v.sha256 if isinstance(v, ArtifactRef) else (v or "")) for k, v in upstream.items()}
    return stage_key(stage, config, digests, module, get_settings().cache_version)


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


# One policy for every stage: the explicit key, a per-machine lock around compute-or-read.
STAGE_CACHE_POLICY = CacheKeyFnPolicy(cache_key_fn=key_from_params).configure(
    lock_manager=StateLockManager(), isolation_level=IsolationLevel.SERIALIZABLE
)

_saved_storages: dict[tuple, Any] = {}


def result_storage():
    """Prefect result storage for the current settings: None (the state folder) or an S3 block.

    Prefect only accepts saved storage blocks, so a ``RemoteFileSystem`` block is saved (once
    per process and Prefect API) holding the base path and endpoint only; s3fs reads the keys
    from the process environment (``export_s3_env``), so the block document has no secret.
    """
    s = get_settings()
    uri = s.prefect_result_uri
    if uri is None:
        return None
    export_s3_env(s)
    opts = s.storage_options(credentials=False)
    memo = (uri, repr(opts), str(get_current_settings().api.url), os.environ.get("PREFECT_HOME"))
    if memo not in _saved_storages:
        block = RemoteFileSystem(basepath=uri, settings=opts)
        digest = hashlib.sha256(f"{uri}|{opts}".encode()).hexdigest()[:12]
        block.save(f"posttrain-results-{digest}", overwrite=True)
        _saved_storages[memo] = block
    return _saved_storages[memo]


class StageTask(Task):
    """A Prefect task that picks its result storage from the settings at call time.

    Settings are read where the task runs (a test or a worker may change them after import),
    and saving the S3 block needs the Prefect API, which import time must not start.
    """

    def _bound(self) -> Task:
        storage = result_storage()
        return self if storage is None else Task.with_options(self, result_storage=storage)

    def __call__(self, *args, **kwargs):
        return Task.__call__(self._bound(), *args, **kwargs)

    def submit(self, *args, **kwargs):
        return Task.submit(self._bound(), *args, **kwargs)

    def with_options(self, *args, **kwargs) -> "StageTask":
        t = Task.with_options(self, *args, **kwargs)
        t.__class__ = StageTask
        return t


# GPU-bound stages carry this tag: `posttrain work-pool` creates a Prefect tag concurrency limit of
# one slot for it, so two flow runs on one GPU machine never hold the GPU at once.
GPU: tuple[str, ...] = ("gpu",)


def stage_task(name: str, timeout_s: float | None = None, tags: tuple[str, ...] = ()):
    """Decorator: a Prefect task cached by its explicit ``key`` parameter, result persisted.

    ``tags`` go to Prefect (e.g. ``gpu``, for a tag concurrency limit).
    """

    def wrap(fn) -> StageTask:
        return StageTask(
            fn=fn,
            name=name,
            cache_policy=STAGE_CACHE_POLICY,
            persist_result=True,
            timeout_seconds=timeout_s,
            log_prints=True,
            tags=set(tags) or None,
        )

    return wrap


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
