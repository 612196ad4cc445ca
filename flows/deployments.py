"""Prefect deployments of the pipeline, for the UI, a schedule and a process work pool.

The same set is described in ``deployments/prefect.yaml`` (``prefect deploy --all``); this
module builds it from code for ``posttrain serve-flows`` (runs in this process) and
``posttrain deploy-flows`` (runs on a worker). A test checks that both register the same thing.

Overlap rules, all enforced by the Prefect server or runner rather than by our code:
- each deployment has ``concurrency_limit`` 1 with ``ENQUEUE``: a second run waits
  (``AwaitingConcurrencySlot``) instead of starting beside the first;
- on a work pool every deployment uses the ``pipeline`` work queue, whose concurrency limit
  is 1, so a scheduled retrain and a UI-triggered run of another deployment never overlap
  either; ``serve-flows`` gets the same from the runner's ``limit=1``;
- GPU-bound tasks carry the ``gpu`` tag, whose tag concurrency limit (1 slot) is created by
  ``ensure_work_pool``: one GPU job at a time even across pools and processes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.recipe import STAGES

REPO_ROOT = Path(__file__).resolve().parents[1]
PREFECT_YAML = REPO_ROOT / "deployments" / "prefect.yaml"
WORK_POOL = "posttrain-gpu"
WORK_QUEUE = "pipeline"
GPU_TAG = "gpu"
DEFAULT_CRON = "0 3 * * 0"  # Sundays 03:00
DEFAULT_TIMEZONE = "UTC"
DEFAULT_RECIPE = "default"
TAGS = ["posttrain"]
POST_TRAINING = "flows/post_training.py:post_training"
RETRAIN = "flows/retrain.py:recurring_retrain"


@dataclass(frozen=True)
class DeploymentSpec:
    """What one deployment is: the fields ``prefect.yaml`` and the API share."""

    name: str
    entrypoint: str
    description: str
    parameters: dict[str, Any] = field(default_factory=dict)
    cron: str | None = None
    timezone: str = DEFAULT_TIMEZONE
    prefill_config: bool = False  # the `config` form starts from the named recipe


def form_parameters(spec: DeploymentSpec) -> dict[str, Any]:
    """The deployment's parameter defaults: the spec's, plus, where the spec asks for it, the
    whole named recipe as ``config`` so that the UI's custom-run form starts from its values
    (read when the deployment is registered: re-register after editing the recipe file)."""
    params = dict(spec.parameters)
    if spec.prefill_config:
        from components.recipe import load_recipe

        params["config"] = load_recipe(spec.parameters["recipe"]).model_dump(mode="json")
    return params


def deployment_specs(recipe: str = DEFAULT_RECIPE, cron: str = DEFAULT_CRON,
                     timezone: str = DEFAULT_TIMEZONE) -> list[DeploymentSpec]:
    """``post-training`` (on demand), ``stage-<name>`` per stage, ``recurring-retrain`` (cron)."""
    specs = [DeploymentSpec("post-training", POST_TRAINING,
                            "Run the whole pipeline on demand; fill in `config` for a custom recipe.",
                            {"recipe": recipe}, prefill_config=True)]
    specs += [DeploymentSpec(f"stage-{s}", POST_TRAINING,
                             f"Run up to `{s}` (upstream stages are usually cache hits).",
                             {"recipe": recipe, "stages": [s]}) for s in STAGES]
    specs.append(DeploymentSpec("recurring-retrain", RETRAIN,
                                "Scheduled retrain from the registry champion on the latest data.",
                                {"recipe": recipe}, cron=cron, timezone=timezone))
    return specs


def concurrency() -> Any:
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

    return ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE)


def build_deployments(specs: list[DeploymentSpec], work_pool: str | None = None,
                      work_queue: str | None = WORK_QUEUE) -> list:
    """RunnerDeployments with the repository as local storage (pull step: set_working_directory),
    so a process worker runs the flows from the repository root, where ``.env`` and the default
    state folder live."""
    from prefect import Flow
    from prefect.schedules import Cron

    flows: dict[str, Any] = {}
    out = []
    for s in specs:
        if s.entrypoint not in flows:
            flows[s.entrypoint] = Flow.from_source(source=str(REPO_ROOT), entrypoint=s.entrypoint)
        out.append(flows[s.entrypoint].to_deployment(
            name=s.name, description=s.description, parameters=form_parameters(s), tags=TAGS,
            schedules=[Cron(s.cron, timezone=s.timezone)] if s.cron else None,
            concurrency_limit=concurrency(), work_pool_name=work_pool,
            work_queue_name=work_queue if work_pool else None))
    return out


def ensure_work_pool(name: str = WORK_POOL, queue: str = WORK_QUEUE, gpu_slots: int = 1) -> dict:
    """Create or update the process work pool, its one-at-a-time queue and the ``gpu`` tag limit."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(
                name=name, type="process", base_job_template=ProcessWorker.get_default_base_job_template(),
                description="posttrain flows on this machine (GPU-bound tasks share the 'gpu' limit)"))
        try:
            q = client.read_work_queue_by_name(queue, work_pool_name=name)
            client.update_work_queue(q.id, concurrency_limit=1)
        except ObjectNotFound:
            client.create_work_queue(name=queue, work_pool_name=name, concurrency_limit=1,
                                     description="one pipeline run at a time (UI, per-stage and scheduled)")
    ensure_gpu_limit(gpu_slots)
    return {"work_pool": name, "work_queue": queue, "queue_limit": 1, "gpu_tag_limit": gpu_slots}


def ensure_gpu_limit(slots: int = 1) -> None:
    """The ``gpu`` tag concurrency limit (a global limit named ``tag:gpu`` in Prefect 3)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.create_concurrency_limit(tag=GPU_TAG, concurrency_limit=slots)  # an upsert


def deploy_flows(specs: list[DeploymentSpec], work_pool: str = WORK_POOL, work_queue: str = WORK_QUEUE) -> dict:
    """Register every deployment against the work pool (same result as ``prefect deploy --all``)."""
    ensure_work_pool(work_pool, work_queue)
    return {d.name: str(d.apply()) for d in build_deployments(specs, work_pool, work_queue)}


MISSED = "missed: serve-flows was not running at its scheduled time (scheduled retrains are not caught up)"


def skip_missed_retrains(name: str = "recurring-retrain") -> list[str]:
    """Cancel the scheduler's runs of the retrain that are already late, with a message; the ids.

    Choice (Airflow's ``catchup=False``): a retrain starts from the champion on the latest data, so
    the retrains missed while ``serve-flows`` was stopped would all compute the same thing one after
    another. Prefect keeps late scheduled runs and a restarted runner would run every one of them
    (an every-minute schedule stopped for ten minutes: ten retrains in a row). Runs a user scheduled
    by hand are left alone; the next scheduled time runs as usual.
    """
    from datetime import datetime, timezone

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.states import Cancelled

    now = datetime.now(timezone.utc)
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[name])),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(
                any_=[StateType.SCHEDULED]))))
        late = [r for r in runs if r.auto_scheduled and r.run_count == 0 and r.expected_start_time
                and r.expected_start_time < now]
        for r in late:
            client.set_flow_run_state(r.id, Cancelled(message=MISSED), force=True)
    if late:
        print(f"serve-flows: {len(late)} scheduled {name} run(s) missed while it was stopped: cancelled, "
              "not caught up", flush=True)
    return [str(r.id) for r in late]


def serve_flows(specs: list[DeploymentSpec]) -> None:
    """Register the deployments and run their flow runs from this process until Ctrl-C."""
    from prefect import serve

    ensure_gpu_limit()
    for spec in specs:
        if spec.cron:  # the scheduled deployments: recurring-retrain
            skip_missed_retrains(spec.name)
    # limit=1: one flow run at a time in this process, whichever deployment it belongs to.
    serve(*build_deployments(specs, work_pool=None), limit=1)
