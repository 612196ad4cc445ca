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
"""

from __future__ import annotations

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from components.settings import Settings, get_settings

RAY_NAMESPACE = "posttrain"


def task_runner(settings: Settings | None = None) -> TaskRunner:
    """The task runner of the post-training flow for these settings."""
    s = settings or get_settings()
    if s.executor != "ray":
        return ThreadPoolTaskRunner(max_workers=1)
    from prefect_ray import RayTaskRunner

    return RayTaskRunner(address=s.ray_address, init_kwargs={
        "namespace": RAY_NAMESPACE,
        "runtime_env": {"env_vars": s.worker_env()},
        "log_to_driver": False,  # workers' output stays in Ray's session logs, not the user's terminal
    })


def ray_remote_options(settings: Settings | None = None) -> dict:
    """Ray options of one fan-out task: one CPU, and Ray's own resubmission when the worker or its
    node dies (a Prefect retry cannot run in a process that is gone)."""
    s = settings or get_settings()
    return {"num_cpus": 1, "max_retries": s.task_retries, "retry_exceptions": False}


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
