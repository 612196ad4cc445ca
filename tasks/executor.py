"""Where fan-out tasks run: threads of this process (``local``) or a Ray cluster (``ray``).

``POSTTRAIN_EXECUTOR=ray`` gives the flow prefect-ray's ``RayTaskRunner`` on
``POSTTRAIN_RAY_ADDRESS``: every ``.submit()`` of a flow (compression variants, evaluation
passes, difficulty shards) becomes a Ray task; stages called directly still run in the flow's
process. Ray workers read their settings from ``POSTTRAIN_*`` variables put into Ray's
runtime_env (``Settings.worker_env``: state folder, artifact root, MLflow URI, S3 endpoint),
never a secret: S3 keys come from each node's own environment (the shell that ran
``ray start``). Prefect's own settings (API URL, result storage) travel in the task's
serialized context, as prefect-ray does it.

Locally the fan-out tasks run one at a time (the memory and thread use of one stage, as before).

Which of the two a flow run gets is decided here only, from the settings of the process that
runs the flow: the post-training flow's decorator carries an ``ExecutorTaskRunner``, which picks
when the run first submits work. So ``posttrain run``, ``python -m flows.post_training``, a
deployment run of ``serve-flows`` or of a worker (a fresh process importing the entrypoint, with
that process's environment) and the retrain's subflow all honour ``POSTTRAIN_EXECUTOR``;
importing a flow never connects to Ray, and ``check_executor`` (the first line of the flow)
turns a missing or unreachable cluster into a one-line error before any stage runs.
"""

from __future__ import annotations

from typing import Any

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from components.settings import Settings, get_settings

RAY_NAMESPACE = "posttrain"
GPU_TAG = "gpu"  # tasks.common.GPU: the tag of GPU-bound stage tasks
# Ray job metadata naming the Prefect flow run whose fan-out tasks a Ray job (one driver) runs, and
# the run it belongs to (a deployment run of recurring-retrain for its post-training subflow):
# `ray list jobs --detail` or Ray's state API find a run's tasks through them.
FLOW_RUN_KEY = "prefect_flow_run_id"
ROOT_FLOW_RUN_KEY = "prefect_root_flow_run_id"


def task_runner(settings: Settings | None = None, job_metadata: dict[str, str] | None = None) -> TaskRunner:
    """The task runner of the post-training flow for these settings (not started)."""
    s = settings or get_settings()
    if s.executor != "ray":
        return ThreadPoolTaskRunner(max_workers=1)
    from prefect_ray import RayTaskRunner
    from ray.job_config import JobConfig

    return RayTaskRunner(address=s.ray_address, init_kwargs={
        "namespace": RAY_NAMESPACE,
        "runtime_env": {"env_vars": s.worker_env()},
        "job_config": JobConfig(metadata=dict(job_metadata or {})),
        "log_to_driver": False,  # workers' output stays in Ray's session logs, not the user's terminal
    })


def check_executor(settings: Settings | None = None) -> None:
    """With ``executor=ray``: the address is set, ray is installed and the cluster answers, else the
    pre-flight's one-line ``UserError``. Cheap (one TCP connect); connects no Ray driver."""
    from components.preflight import check_executor as check

    check(settings or get_settings())


def _run_metadata() -> dict[str, str]:
    """The flow run (and its root run) submitting work now, for the Ray job's metadata."""
    from prefect.runtime import flow_run

    out: dict[str, str] = {}
    try:
        if flow_run.get_id():
            out[FLOW_RUN_KEY] = str(flow_run.get_id())
            out[ROOT_FLOW_RUN_KEY] = str(flow_run.get_root_flow_run_id())
    except Exception:  # noqa: BLE001 - a label for Ray's job list; the API may be away
        pass
    return out


class ExecutorTaskRunner(TaskRunner):
    """The flow's task runner: ``task_runner(settings)`` of the process running the flow run,
    started at the run's first ``.submit()`` (inside the flow, so a Ray error fails the run
    with its message) and stopped with the run. Until then nothing is imported or connected."""

    def __init__(self) -> None:
        super().__init__()
        self._inner: TaskRunner | None = None

    @property
    def name(self) -> str:
        return "executor"

    def duplicate(self) -> "ExecutorTaskRunner":
        return type(self)()

    def _runner(self) -> TaskRunner:
        if not self._started:
            raise RuntimeError("The task runner must be started before submitting work.")
        if self._inner is None:
            s = get_settings()
            inner = task_runner(s, _run_metadata() if s.executor == "ray" else None)
            inner.__enter__()
            self._inner = inner
        return self._inner

    def submit(self, task: Any, parameters: dict[str, Any], wait_for: Any = None,
               dependencies: Any = None) -> Any:
        return self._runner().submit(task, parameters, wait_for=wait_for, dependencies=dependencies)

    def __exit__(self, exc_type: Any, exc_value: Any, traceback: Any) -> None:
        inner, self._inner = self._inner, None
        try:
            if inner is not None:
                inner.__exit__(exc_type, exc_value, traceback)
        finally:
            super().__exit__(exc_type, exc_value, traceback)


def ray_remote_options(settings: Settings | None = None, gpu_bound: bool = False,
                       cluster_gpus: float | None = None) -> dict:
    """Ray options of one fan-out task: one CPU, one GPU for a GPU-bound stage when the run uses
    CUDA (``device: cuda``, or ``auto`` on a cluster with GPUs: ``cluster_gpus``, read from Ray when
    None), and Ray's own resubmission when the worker or its node dies (a Prefect retry cannot run
    in a process that is gone). The GPU claim is not optional: Ray sets CUDA_VISIBLE_DEVICES=""
    in a task that asks for no GPU, so without it a GPU stage would run on the CPU."""
    s = settings or get_settings()
    opts: dict[str, Any] = {"num_cpus": 1, "max_retries": s.task_retries, "retry_exceptions": False}
    if gpu_bound and s.device != "cpu":
        if s.device == "auto" and cluster_gpus is None:
            import ray

            cluster_gpus = float(ray.cluster_resources().get("GPU", 0.0)) if ray.is_initialized() else 0.0
        if s.device == "cuda" or (cluster_gpus or 0.0) > 0:
            opts["num_gpus"] = 1
    return opts


def ray_tags(tags: set[str] | None) -> set[str]:
    """A fan-out task's Prefect tags on Ray: without ``gpu``. Ray's ``num_gpus`` already keeps two
    tasks off one GPU, across the whole cluster; the ``gpu`` tag's Prefect limit (one slot, meant
    for one machine) would hold the cluster's tasks to one at a time."""
    return set(tags or ()) - {GPU_TAG}


# Errors that say nothing about the inputs: the same task may well succeed elsewhere or later.
_USER_OS_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)
_RAY_INFRA = ("WorkerCrashedError", "NodeDiedError", "RaySystemError", "ObjectLostError", "OwnerDiedError",
              "ObjectFetchTimedOutError", "ActorDiedError", "ActorUnavailableError", "LocalRayletDiedError",
              "OutOfMemoryError", "TaskUnschedulableError", "RuntimeEnvSetupError")


def is_infrastructure_error(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or what it was raised from) is an infrastructure failure: a Ray worker or
    node that died, a lost object, a connection or I/O error. User errors (RecipeError, ValueError
    and pydantic's ValidationError, a missing file, a permission) are never retried."""
    seen = 0
    while exc is not None and seen < 10:
        names = {c.__name__ for c in type(exc).__mro__}
        if names & set(_RAY_INFRA) or isinstance(exc, (ConnectionError, TimeoutError)):
            return True
        if isinstance(exc, OSError) and not isinstance(exc, _USER_OS_ERRORS):
            return True
        exc = exc.__cause__ or getattr(exc, "cause", None)
        seen += 1
    return False


def retry_infrastructure(task, task_run, state) -> bool:
    """Prefect ``retry_condition_fn``: retry a failed fan-out task only after an infrastructure error."""
    try:
        state.result(raise_on_failure=True)
    except BaseException as e:  # noqa: BLE001 - classifying the task's own exception
        return is_infrastructure_error(e)
    return False
