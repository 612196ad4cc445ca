"""Promise: ``POSTTRAIN_EXECUTOR=ray`` runs the smoke recipe's fan-out tasks on a real local Ray
cluster (a head node and a second node joined to it, one CPU each, on 127.0.0.1) through the
CLI, with the payload digests of a local run; Ray's state API shows the tasks on both nodes; the
second node, killed while it runs a fan-out task, does not stop the run.

Each ``ray start`` runs in its own process group, and the cluster is stopped by killing exactly
those groups (``ray stop --force`` would stop every Ray cluster of the machine, other test
sessions' too). Ray's temp folder is this module's own; its logs are shown when a check fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from ray_cluster import RAY_ENV, RayCluster, clean_env, ray_log_tracebacks

REPO = Path(__file__).resolve().parents[2]
POSTTRAIN = str(Path(sys.executable).parent / "posttrain")
SMOKE = ["run", "--recipe", "smoke", "--set", "estimate_difficulty.shards=2"]
FAN_OUT = {"estimate_difficulty_shard", "compress", "evaluate_passes"}  # Ray task names (Prefect task names)
FAN_OUT_STAGES = ("estimate_difficulty:", "compress:", "evaluate_passes:")


def _env(state: Path | None = None, **extra: str) -> dict:
    env = {**clean_env(), "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(REPO), **RAY_ENV, **extra}
    if state is not None:
        env.update(POSTTRAIN_STATE_DIR=str(state), POSTTRAIN_PREFECT_API_URL="http://127.0.0.1:9/api")
    return env


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ray-runs")


@pytest.fixture(scope="module")
def local_run(root):
    """The local run, started before the cluster so that the two overlap."""
    proc = subprocess.Popen([POSTTRAIN, *SMOKE, "--summary", str(root / "local.json")], env=_env(root / "local"),
                            cwd=REPO, stdout=open(root / "local.log", "w"), stderr=subprocess.STDOUT)
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def cluster(local_run):
    c = RayCluster(Path(tempfile.mkdtemp(prefix="r17-", dir="/tmp")), _env())
    saved = {k: os.environ.get(k) for k in RAY_ENV}
    os.environ.update(RAY_ENV)  # this process reads Ray's state API
    try:
        c.start_head()
        c.join_node()
        yield c
    finally:
        c.stop()
        shutil.rmtree(c.temp_dir, ignore_errors=True)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _tasks(address: str) -> list:
    from ray.util.state import list_tasks

    return list(list_tasks(address=address, detail=True, limit=10_000, raise_on_missing_output=False))


@pytest.fixture(scope="module")
def runs(cluster, local_run, root):
    """The local run and a Ray run during which the second node is killed while it runs a fan-out task."""
    address = cluster.address
    nodes = cluster.wait_nodes(2)
    head_id = next(i for i, n in nodes.items() if n.is_head_node)
    second_id = next(i for i in nodes if i != head_id)
    env = _env(root / "ray", POSTTRAIN_EXECUTOR="ray", POSTTRAIN_RAY_ADDRESS=address)
    proc = subprocess.Popen([POSTTRAIN, *SMOKE, "--summary", str(root / "ray.json")], env=env, cwd=REPO,
                            stdout=open(root / "ray.log", "w"), stderr=subprocess.STDOUT)
    killed_task = None
    deadline = time.time() + 600
    while killed_task is None and proc.poll() is None and time.time() < deadline:
        busy = [t for t in _tasks(address) if t.node_id == second_id and t.name in FAN_OUT and t.state == "RUNNING"]
        if busy:
            cluster.nodes[1].kill()  # the raylet and its workers, mid-task
            killed_task = busy[0]
        time.sleep(0.5)
    rc = proc.wait(timeout=600)
    assert rc == 0, f"ray run failed: {(root / 'ray.log').read_text()[-4000:]}\n{ray_log_tracebacks(cluster.temp_dir)}"
    assert local_run.wait(timeout=600) == 0, (root / "local.log").read_text()[-4000:]
    return {"local": json.loads((root / "local.json").read_text()), "ray": json.loads((root / "ray.json").read_text()),
            "head": head_id, "second": second_id, "killed": killed_task, "tasks": _tasks(address)}


def _digests(summary: dict) -> dict[str, str]:
    return {f"{stage}/{name}": ref["sha256"] for stage, s in summary["stages"].items() for name, ref in s["outputs"].items()}


def test_ray_run_has_the_local_runs_digests(runs):
    local, ray_run = runs["local"], runs["ray"]
    assert list(ray_run["stages"]) == list(local["stages"])
    assert not any(s["cached"] for s in ray_run["stages"].values())  # computed, in a state folder of its own
    assert _digests(ray_run) == _digests(local)
    assert {s for s in ray_run["stages"] if s.startswith(FAN_OUT_STAGES)}


def test_fan_out_tasks_ran_on_both_nodes_of_the_cluster(runs):
    fan = [t for t in runs["tasks"] if t.name in FAN_OUT]
    finished = [t for t in fan if t.state == "FINISHED"]
    # every fan-out stage of the run is a finished Ray task (a killed attempt is retried)
    n_fan = sum(1 for s in runs["ray"]["stages"] if s.startswith(FAN_OUT_STAGES))
    assert len({t.task_id for t in finished}) == n_fan, [(t.name, t.state, t.node_id) for t in fan]
    assert {t.name for t in finished} == FAN_OUT
    assert runs["killed"] is not None, "no fan-out task ran on the second node"
    assert {t.node_id for t in fan} == {runs["head"], runs["second"]}


def test_killing_the_second_node_mid_task_still_finishes_the_run(runs):
    killed = runs["killed"]
    attempts = [t for t in runs["tasks"] if t.task_id == killed.task_id]
    assert any(t.state == "FINISHED" and t.node_id == runs["head"] for t in attempts), \
        [(t.attempt_number, t.state, t.node_id) for t in attempts]
    assert max(t.attempt_number for t in attempts) >= 1  # Ray ran it again, on the node left


def test_executor_ray_without_a_reachable_cluster_fails_before_work_in_one_line(tmp_path):
    for extra, words in (({}, ("POSTTRAIN_RAY_ADDRESS is not set",)),
                         ({"POSTTRAIN_RAY_ADDRESS": "127.0.0.1:9"}, ("does not answer", "127.0.0.1:9", "ray start"))):
        r = subprocess.run([POSTTRAIN, *SMOKE], env=_env(tmp_path / "state", POSTTRAIN_EXECUTOR="ray", **extra),
                           cwd=REPO, capture_output=True, text=True, timeout=300)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1, r.stderr[-3000:]
        assert all(w in lines[0] for w in words), lines[0]
    assert not (tmp_path / "state" / "artifacts").exists() or not any((tmp_path / "state" / "artifacts").iterdir())


def test_what_the_cluster_computed_is_a_cache_hit_for_a_local_run(runs, root):
    r = subprocess.run([POSTTRAIN, *SMOKE, "--summary", str(root / "again.json")], env=_env(root / "ray"), cwd=REPO,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    again = json.loads((root / "again.json").read_text())
    assert all(s["cached"] for s in again["stages"].values()), {k: s["cached"] for k, s in again["stages"].items()}
    assert _digests(again) == _digests(runs["ray"])
