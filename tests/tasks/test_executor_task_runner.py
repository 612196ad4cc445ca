"""The flows' task runner follows POSTTRAIN_EXECUTOR of the process running the flow, however the
run is started, and importing a flow (what a deployment run or a worker does first) connects to
no Ray cluster, even one that is not there."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROBE = """
import sys
from flows.post_training import post_training
from flows.retrain import recurring_retrain
from tasks.executor import ExecutorTaskRunner
print(type(post_training.task_runner).__name__, isinstance(post_training.task_runner, ExecutorTaskRunner),
      "ray" in sys.modules, "prefect_ray" in sys.modules)
"""


def test_importing_the_flows_with_executor_ray_connects_to_nothing(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "POSTTRAIN_", "RAY_"))}
    env.update(PYTHONPATH=str(REPO), POSTTRAIN_STATE_DIR=str(tmp_path), POSTTRAIN_EXECUTOR="ray",
               POSTTRAIN_RAY_ADDRESS="127.0.0.1:9", POSTTRAIN_PREFECT_API_URL="http://127.0.0.1:9/api")
    r = subprocess.run([sys.executable, "-c", PROBE], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    # The decorator's runner decides when the run submits work; Ray is not even imported before.
    assert r.stdout.split() == ["ExecutorTaskRunner", "True", "False", "False"], r.stdout + r.stderr[-2000:]


def test_the_runner_picks_the_settings_executor_when_started():
    from components.settings import Settings
    from tasks.executor import ExecutorTaskRunner, task_runner

    runner = ExecutorTaskRunner().duplicate()
    assert isinstance(runner, ExecutorTaskRunner) and runner.name == "executor"
    assert type(task_runner(Settings(_env_file=None))).__name__ == "ThreadPoolTaskRunner"
    ray_runner = task_runner(Settings(_env_file=None, executor="ray", ray_address="127.0.0.1:9"),
                             {"prefect_flow_run_id": "r1"})
    assert type(ray_runner).__name__ == "RayTaskRunner"
    assert ray_runner.init_kwargs["job_config"].metadata == {"prefect_flow_run_id": "r1"}


def test_on_ray_a_gpu_stage_claims_a_ray_gpu_instead_of_the_gpu_tag():
    """Ray hides GPUs from a task that asks for none (CUDA_VISIBLE_DEVICES=""), and its num_gpus
    keeps tasks off each other's GPU across the cluster, where the Prefect `gpu` tag limit (one
    slot) would run the cluster's fan-out tasks one at a time."""
    from components.settings import Settings
    from tasks.common import GPU
    from tasks.difficulty import difficulty_shard_task as shard
    from tasks.executor import ray_remote_options, ray_tags

    def opts(device: str, gpu_bound: bool, cluster_gpus: float) -> dict:
        return ray_remote_options(Settings(_env_file=None, device=device, task_retries=3), gpu_bound, cluster_gpus)

    assert opts("cuda", True, 0.0) == {"num_cpus": 1, "num_gpus": 1, "max_retries": 3, "retry_exceptions": False}
    assert opts("auto", True, 8.0)["num_gpus"] == 1  # auto: the cluster has GPUs
    assert "num_gpus" not in opts("auto", True, 0.0) and "num_gpus" not in opts("cpu", True, 8.0)
    assert "num_gpus" not in opts("cuda", False, 8.0)  # a CPU-only task
    assert set(GPU) <= shard.tags and ray_tags(shard.tags) == shard.tags - set(GPU)
