"""What every stage task shares: cache keys, the MLflow child run, artifacts, Prefect artifacts.

A stage task takes its inputs once (typed configs and upstream handles) and owns a key function
over them (``stage_task(name, key=...)``: ``stage_key`` of the stage config, upstream digests,
code version and cache_version); its cache policy calls that function on the task's
parameters, so identical inputs are a cache hit across runs and processes. Parameters the key
function does not name (the MLflow run id) do not affect caching.

Two runs that reach the same key at once do the work once: the policy runs each stage in a
SERIALIZABLE transaction whose lock is a file in the state folder, so the second run waits and
then reads the first one's result as a cache hit. With an ``s3://`` artifact root, Prefect's
result records (the cache) live in the bucket too, so another machine with an empty state
folder finds them.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import inspect
import logging
import os
import re
import threading
import time
from pathlib import Path
from typing import Any, Callable

from prefect import Task, get_run_logger
from prefect.artifacts import ProgressArtifact, create_table_artifact, update_progress_artifact
from prefect.cache_policies import CacheKeyFnPolicy
from prefect.filesystems import RemoteFileSystem
from prefect.runtime import flow_run
from prefect.settings import get_current_settings
from prefect.states import State
from prefect.transactions import IsolationLevel

from components.artifacts import ArtifactRef, ArtifactStore
from components.caching import stage_key
from components.progress import format_figures, terminal
from components.settings import export_s3_env, get_settings
from components.stages.context import StageContext, StageResult
from components.summary import key_figures, with_aliases
from components.tracking import Tracker
from tasks.locks import StateLockManager


def _apply_log_levels() -> None:
    """Prefect configures logging when first imported; when that happened before
    ``configure_process_env`` set the levels (a test process), apply them now (incremental:
    levels only, handlers untouched)."""
    if os.environ.get("PREFECT_LOGGING_LOGGERS_PREFECT_FLOW_RUNS_LEVEL"):
        from prefect.logging.configuration import setup_logging

        setup_logging()


_apply_log_levels()


def task_key(task: Task, parameters: dict[str, Any]) -> str:
    """The cache key of ``task`` for these parameters: its key function applied to the parameters
    it names (the rest, such as ``run_id``, never enter the key)."""
    key_fn = getattr(task.fn, "stage_key", None)
    if key_fn is None:
        raise TypeError(f"task {task.name} has no key function: declare it with stage_task(name, key=...)")
    names = inspect.signature(key_fn).parameters
    return key_fn(**{k: v for k, v in parameters.items() if k in names})


def key_from_params(context, parameters: dict) -> str:
    return task_key(context.task, parameters)


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


class StageReport:
    """One stage as the user watches it: a line when it starts and ends (terminal and Prefect
    logs, at INFO) and one Prefect progress artifact on the ROOT flow run, keyed by the stage
    label (``progress-compress-rtn-w8``), that reaches 100 % when the stage ends.

    ``span`` maps a part's own 0..1 progress into the stage's (an RL segment is one part).
    Artifact updates from reports are throttled to one a second; the terminal bar redraws on
    every report. A heartbeat thread redraws the bar and rewrites the artifact every
    ``HEARTBEAT_S`` seconds with the elapsed time, so a stage whose parts report rarely (one RL
    step takes half a minute on 2 cores) still shows it is alive at least every 10 s.
    """

    MIN_INTERVAL_S = 1.0
    HEARTBEAT_S = 5.0

    def __init__(self, label: str, flow_run_id: str | None):
        self.label, self.flow_run_id = label, flow_run_id
        self.span = (0.0, 1.0)
        self.artifact_id = None
        self._last = 0.0
        self._pct = 0.0
        self._msg, self._frac = "started", 0.0
        self._t0 = time.perf_counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def begin(self) -> "StageReport":
        terminal().start(self.label)
        _log().info("%s: started", self.label)
        try:
            if self.flow_run_id:
                art = ProgressArtifact(progress=0.0, key=_artifact_key(f"progress-{self.label}"),
                                       description=f"{self.label}: started", flow_run_id=self.flow_run_id)
                self.artifact_id = art.create().id
        except Exception:  # progress display must never fail a stage
            self.artifact_id = None
        # The thread runs in a copy of this context: the same Prefect settings and API server.
        ctx = contextvars.copy_context()
        self._beat = threading.Thread(target=ctx.run, args=(self._heartbeat,), daemon=True,
                                      name=f"posttrain-progress-{self.label}")
        self._beat.start()
        return self

    def update(self, msg: str, frac: float) -> None:
        lo, hi = self.span
        frac = lo + (hi - lo) * max(0.0, min(1.0, float(frac)))
        self._msg, self._frac = msg, frac
        terminal().update(self.label, msg, frac)
        now = time.perf_counter()
        if now - self._last >= self.MIN_INTERVAL_S:
            self._last = now
            self._artifact(100.0 * frac, f"{self.label}: {msg}")

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.HEARTBEAT_S):
            elapsed = time.perf_counter() - self._t0
            msg, frac = self._msg, self._frac
            terminal().update(self.label, f"{msg} ({elapsed:.0f}s)", frac)
            self._artifact(100.0 * frac, f"{self.label}: {msg} ({elapsed:.0f}s elapsed)")

    def end(self, cached: bool, metrics: dict, info: dict | None = None, failed: bool = False) -> None:
        self._stop.set()
        if self._beat is not None and self._beat is not threading.current_thread():
            self._beat.join(timeout=10)
        seconds = time.perf_counter() - self._t0
        figs = key_figures(self.label, metrics, info or {})
        how = "failed" if failed else ("cache hit" if cached else "computed (cache miss)")
        terminal().end(self.label, cached, seconds, figs, failed=failed)
        text = format_figures(figs)
        _log().info("%s: %s in %.1fs%s", self.label, how, seconds, f"; {text}" if text else "")
        # 100 % only when the stage has really ended; a failed stage keeps its last value.
        self._artifact(self._pct if failed else 100.0,
                       f"{self.label}: {how}, {seconds:.1f}s" + (f"; {text}" if text else ""), final=True)

    def _artifact(self, pct: float, description: str, final: bool = False) -> None:
        if self.artifact_id is None:
            return
        with self._lock:  # the heartbeat and the stage's own reports never interleave
            if not final:
                if self._stop.is_set() and threading.current_thread() is self._beat:
                    return  # the stage has ended: the final value must stay
                pct = min(pct, 99.0)  # a part that reports 1.0 has not ended the stage
            self._pct = pct
            try:
                update_progress_artifact(self.artifact_id, progress=pct, description=description)
            except Exception:
                pass


_LIVE: dict[tuple[str, str], StageReport] = {}
_CURRENT: contextvars.ContextVar[StageReport | None] = contextvars.ContextVar("posttrain_stage", default=None)


def _log():
    try:
        return get_run_logger()
    except Exception:  # outside a flow/task run (direct calls in unit tests)
        return logging.getLogger("posttrain")


def _root_flow_run_id() -> str | None:
    try:
        return str(flow_run.root_flow_run_id or "") or None
    except Exception:
        return None


def announce_run(recipe: str, mlflow_url: str) -> None:
    """The first lines a user sees: where to watch this run in Prefect and MLflow."""
    try:
        ui = flow_run.ui_url
    except Exception:
        ui = None
    terminal().line(f"posttrain run: recipe {recipe}")
    if ui and str(ui).startswith("http"):  # an ephemeral server has no UI
        terminal().line(f"  Prefect flow run  {ui}")
    terminal().line(f"  MLflow run        {mlflow_url}")
    _log().info("recipe %s; MLflow run %s", recipe, mlflow_url)


@contextlib.contextmanager
def reporting(label: str):
    """Report stage ``label`` for the body; inside it, stage progress goes to this report.

    A report already open for the label on the same root flow run (the parent flow opened it
    around a subflow) is reused and left for its owner to end. The body calls ``rep.end``;
    an exception ends it as failed.
    """
    root = _root_flow_run_id() or "local"
    rep = _LIVE.get((root, label))
    owner = rep is None
    if owner:
        rep = _LIVE[(root, label)] = StageReport(label, None if root == "local" else root).begin()
    token = _CURRENT.set(rep)
    try:
        yield rep, owner
    except BaseException:
        if owner:
            rep.end(False, {}, failed=True)
        raise
    finally:
        _CURRENT.reset(token)
        if owner:
            _LIVE.pop((root, label), None)


def make_context(stage: str, run_id: str, trk: Tracker, metric_aliases: dict[str, str] | None = None) -> StageContext:
    """A StageContext whose callbacks log to the stage's MLflow run, its Prefect progress
    artifact and the terminal. ``metric_aliases`` logs chosen metrics a second time under a
    headline name (``reward_mean`` also as ``reward/mean``)."""
    s = get_settings()
    report = _CURRENT.get()

    def progress(msg: str, frac: float) -> None:
        if report is not None:
            report.update(msg, frac)

    def log_metrics(m: dict, step: int | None = None) -> None:
        trk.log_metrics(run_id, with_aliases(m, metric_aliases), step)

    def log_table(rows: list[dict], name: str) -> None:
        trk.log_table(run_id, rows, name)
        prefect_table(rows, f"{stage}-{Path(name).stem}", f"{stage}: {Path(name).stem}")

    return StageContext(
        device=s.resolved_device(),
        log_metrics=log_metrics,
        log_artifact=lambda p, ap=None: trk.log_artifact(run_id, p, ap),
        log_table=log_table,
        log_dataset=lambda d, name, digest, context: trk.log_dataset(run_id, d, name, digest, context),
        progress=progress,
        tracker=trk,
        extra={"state_dir": s.state_path},
    )


def execute(stage: str, key: str, run_id: str, config: dict, kind: str,
            body: Callable[[Path, StageContext], dict[str, float]], meta: dict | None = None,
            relpath: str | None = None, log_summary: bool = True,
            metric_aliases: dict[str, str] | None = None) -> StageResult:
    """Run a stage body in a clean work folder, commit its output and log it to MLflow."""
    t0 = time.perf_counter()
    st, trk = store(), tracker()
    if log_summary:
        trk.log_params(run_id, config)
        trk.set_tags(run_id, {"cache_key": key, "cache_hit": "false"})
    ctx = make_context(stage, run_id, trk, metric_aliases)
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


def stage_task(name: str, key: Callable[..., str], timeout_s: float | None = None, tags: tuple[str, ...] = ()):
    """Decorator: a Prefect task cached by ``key`` (a function of some of the task's parameters,
    by name), result persisted. ``tags`` go to Prefect (e.g. ``gpu``, for a tag concurrency limit).
    """

    def wrap(fn) -> StageTask:
        fn.stage_key = key
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


def task_run_name(label: str) -> str:
    """What Prefect shows for a stage's task run: ``compress:rtn-w8`` -> ``compress[rtn-w8]``."""
    stage, _, variant = label.partition(":")
    return f"{stage}[{variant}]" if variant else stage


def call_stage_task(task_fn: Task, label: str, run_id: str, refresh: bool = False,
                    **kwargs) -> tuple[StageResult, bool]:
    """Call a stage task (its task run named after ``label``) and say whether it was a cache hit.
    A hit whose payload has vanished from the artifact store is recomputed."""
    named = task_fn.with_options(task_run_name=task_run_name(label))
    fn = named.with_options(refresh_cache=True) if refresh else named
    state = fn(run_id=run_id, return_state=True, **kwargs)
    result: StageResult = state.result()
    cached = was_cached(state)
    if cached and not all(store().exists(r) for r in result.outputs.values()):
        state = named.with_options(refresh_cache=True)(run_id=run_id, return_state=True, **kwargs)
        result, cached = state.result(), False
    return result, cached


def run_stage(task_fn, *, stage: str, parent_run_id: str, refresh: bool = False,
              run_name: str | None = None, **kwargs) -> tuple[StageResult, bool]:
    """Orchestration helper used by flows: child run, task call, cache-hit bookkeeping.

    ``kwargs`` are the task's inputs, given once: the task derives its cache key from them. On a
    cache hit the task body never runs, so the child run is tagged ``cache_hit=true`` and given
    the cached figures here. The stage is reported (terminal, Prefect logs, progress artifact)
    under its label ``stage``.
    """
    trk = tracker()
    run_id = trk.start_run(run_name or stage, parent_run_id, tags={"stage": stage})
    with reporting(stage) as (rep, _owner):
        try:
            result, cached = call_stage_task(task_fn, stage, run_id, refresh, **kwargs)
        except BaseException:
            trk.end_run(run_id, "FAILED")
            raise
        _finish(trk, run_id, rep, result, cached)
    return result, cached


def _finish(trk, run_id: str, rep, result: StageResult, cached: bool) -> None:
    """End a stage's child run and its report; a cache hit is tagged and given the cached figures."""
    if cached:
        trk.set_tags(run_id, {"cache_hit": "true", "cache_key": result.key})
        trk.log_metrics(run_id, result.metrics)
    trk.end_run(run_id)
    result.info.update(mlflow_run_id=run_id, cached=cached)
    rep.end(cached, result.metrics, result.info)


def _submit(task_fn: Task, label: str, run_id: str, refresh: bool, kwargs: dict):
    """Submit one fan-out task to the flow's task runner, with retries after infrastructure errors
    (Prefect's, in the task's process) and Ray's resubmission when that process dies."""
    from tasks.executor import ray_remote_options, ray_tags, retry_infrastructure

    s = get_settings()
    fn = task_fn.with_options(task_run_name=task_run_name(label), retries=s.task_retries,
                              retry_condition_fn=retry_infrastructure, refresh_cache=refresh or None)
    if s.executor != "ray":
        return fn.submit(run_id=run_id, **kwargs)
    from prefect_ray.context import remote_options

    gpu_bound = bool(set(GPU) & set(fn.tags or ()))
    with remote_options(**ray_remote_options(s, gpu_bound)):
        on_ray = fn.with_options()
        on_ray.tags = ray_tags(fn.tags)  # set directly: with_options(tags=...) cannot drop a tag
        return on_ray.submit(run_id=run_id, **kwargs)


def run_stages(task_fn: Task, jobs: list[tuple[str, dict]], *, parent_run_id: str, refresh: bool = False,
               ) -> list[tuple[StageResult, bool]]:
    """``run_stage`` for independent jobs ``(label, task inputs)`` of one task: each gets its child
    run and its report, all are submitted (``.submit()``: the task runner places them: threads
    here, Ray tasks with POSTTRAIN_EXECUTOR=ray), then their results are gathered in order."""
    trk = tracker()
    out: list[tuple[StageResult, bool]] = []
    with contextlib.ExitStack() as stack:
        pending = []
        for label, kwargs in jobs:
            run_id = trk.start_run(label.replace(":", "-"), parent_run_id, tags={"stage": label})
            rep, _owner = stack.enter_context(reporting(label))  # the submitted task copies this context
            pending.append((label, kwargs, run_id, rep, _submit(task_fn, label, run_id, refresh, kwargs)))
        for i, (label, kwargs, run_id, rep, fut) in enumerate(pending):
            try:
                fut.wait()
                state = fut.state
                result: StageResult = state.result()
                cached = was_cached(state)
                if cached and not all(store().exists(r) for r in result.outputs.values()):
                    result, cached = call_stage_task(task_fn, label, run_id, True, **kwargs)
            except BaseException:
                for _label, _kw, other, _rep, _fut in pending[i:]:
                    trk.end_run(other, "FAILED")
                raise
            _finish(trk, run_id, rep, result, cached)
            out.append((result, cached))
    return out
