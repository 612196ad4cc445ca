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
