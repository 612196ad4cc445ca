"""Promise: ``POSTTRAIN_EXECUTOR=ray`` runs the smoke recipe's fan-out tasks on a real local Ray
cluster (a head node and a second node joined to it, one CPU each, on 127.0.0.1) through the
CLI, with the payload digests of a local run; Ray's state API shows the tasks on both nodes; the
second node, killed while it runs a fan-out task, does not stop the run. A deployment run of
`posttrain serve-flows` (the scheduled retrain, whose post-training subflow reaches the sharded
difficulty stage) runs its fan-out tasks on the same cluster when serve-flows' environment says
``POSTTRAIN_EXECUTOR=ray``.

Cost (this is the longest file of `make test`): one Prefect server serves every run of the module
(no ephemeral server per CLI run) and comes up beside the head node; the local run overlaps the
second node's start and the Ray run; the cache-hit run overlaps the deployment run. Each phase's
start is written to ``phases.txt`` in the module's temp folder.

Each ``ray start`` runs in its own process group, and the cluster is stopped by killing exactly
those groups (``ray stop --force`` would stop every Ray cluster of the machine, other test
sessions' too). Ray's temp folder is this module's own; its logs are shown when a check fails.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest
from ray_cluster import RAY_ENV, RayCluster, clean_env, free_ports, ray_log_tracebacks
from ui_procs import api, deployment, start_serve_flows, stop, tracebacks, wait_for

REPO = Path(__file__).resolve().parents[2]
POSTTRAIN = str(Path(sys.executable).parent / "posttrain")
SMOKE = ["run", "--recipe", "smoke", "--set", "estimate_difficulty.shards=2"]
FAN_OUT = {"estimate_difficulty_shard", "compress", "evaluate_passes"}  # Ray task names (Prefect task names)
FAN_OUT_STAGES = ("estimate_difficulty:", "compress:", "evaluate_passes:")
NO_SERVER = "http://127.0.0.1:9/api"
PREFECT_PARENT = str(Path(importlib.util.find_spec("prefect").origin).parent.parent)  # type: ignore[arg-type, union-attr]
# The test cluster's nodes start no idle worker for the first driver: fan-out tasks carry a
# runtime_env, so such a worker (a Python process importing Ray) was never used.
CLUSTER_ENV = {"RAY_prestart_worker_first_driver": "0"}


def _env(state: Path | None = None, api_url: str = NO_SERVER, **extra: str) -> dict:
    env = {**clean_env(), "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(REPO), **RAY_ENV, **extra}
    if state is not None:
        env.update(POSTTRAIN_STATE_DIR=str(state), POSTTRAIN_PREFECT_API_URL=api_url)
    return env


def _phase(root: Path, what: str) -> None:
    with open(root / "phases.txt", "a") as f:
        f.write(f"{time.strftime('%H:%M:%S')} load {os.getloadavg()[0]:5.2f}  {what}\n")


def _popen_run(root: Path, name: str, state: Path, api_url: str, **extra: str) -> subprocess.Popen:
    _phase(root, f"{name} run starts")
    with open(root / f"{name}.log", "w") as log:
        return subprocess.Popen([POSTTRAIN, *SMOKE, "--summary", str(root / f"{name}.json")],
                                env=_env(state, api_url, **extra), cwd=REPO, stdout=log, stderr=subprocess.STDOUT)


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ray-runs")


class PrefectServer:
    """A Prefect API server on a free port, its database in the module's folder, started as
    posttrain starts its own (tasks/server.py): Prefect's app in uvicorn with the ephemeral
    server's services only. A full `prefect server start` (scheduler, late-run, foreman and event
    services) used 42 s of CPU over this module, about as much as the three ephemeral servers it
    replaced (49 s); nothing here needs its scheduler (runs are created through the API) or UI."""

    def __init__(self, home: Path):
        self.home, (port,) = home, free_ports(1)
        self.url = f"http://127.0.0.1:{port}/api"
        env = {**clean_env(), "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
               "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
        with open(home / "server.log", "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "--app-dir", PREFECT_PARENT, "--factory",
                 "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(port),
                 "--log-level", "error", "--lifespan", "on"],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def answers(self) -> bool:
        assert self.proc.poll() is None, (self.home / "server.log").read_text()[-3000:]
        try:
            return httpx.get(f"{self.url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def wait(self) -> str:
        wait_for("the Prefect server", self.answers, 240)
        return self.url


@pytest.fixture(scope="module")
def prefect_server(root):
    """Started first: it comes up while the head node starts."""
    (root / "prefect").mkdir()
    server = PrefectServer(root / "prefect")
    try:
        yield server
    finally:
        stop(server.proc, signal.SIGTERM, timeout_s=30)


@pytest.fixture(scope="module")
def head(prefect_server, root):
    c = RayCluster(Path(tempfile.mkdtemp(prefix="r17-", dir="/tmp")), _env(**CLUSTER_ENV))
    saved = {k: os.environ.get(k) for k in RAY_ENV}
    os.environ.update(RAY_ENV)  # this process reads Ray's state API
    try:
        _phase(root, "head node starts")
        c.start_head()
        yield c
    finally:
        c.stop()
        shutil.rmtree(c.temp_dir, ignore_errors=True)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def local_run(head, prefect_server, root):
    """The local run, started once the server answers, while the second node starts and the Ray run runs."""
    proc = _popen_run(root, "local", root / "local", prefect_server.wait())
    yield proc
    _kill(proc)


@pytest.fixture(scope="module")
def cluster(head, local_run, root):
    _phase(root, "second node starts")
    head.join_node()
    return head


def _tasks(address: str) -> list:
    from ray.util.state import list_tasks

    return list(list_tasks(address=address, detail=True, limit=10_000, raise_on_missing_output=False))


@pytest.fixture(scope="module")
def runs(cluster, local_run, prefect_server, root):
    """The local run and a Ray run during which the second node is killed while it runs a fan-out task."""
    address = cluster.address
    nodes = cluster.wait_nodes(2)
    head_id = next(i for i, n in nodes.items() if n.is_head_node)
    second_id = next(i for i in nodes if i != head_id)
    proc = _popen_run(root, "ray", root / "ray", prefect_server.url, POSTTRAIN_EXECUTOR="ray",
                      POSTTRAIN_RAY_ADDRESS=address)
    killed_task = None
    deadline = time.time() + 600
    while killed_task is None and proc.poll() is None and time.time() < deadline:
        busy = [t for t in _tasks(address) if t.node_id == second_id and t.name in FAN_OUT and t.state == "RUNNING"]
        if busy:
            cluster.nodes[1].kill()  # the raylet and its workers, mid-task
            killed_task = busy[0]
            _phase(root, f"second node killed while it ran {killed_task.name}")
        time.sleep(0.5)
    rc = proc.wait(timeout=600)
    _phase(root, "ray run done")
    assert rc == 0, f"ray run failed: {(root / 'ray.log').read_text()[-4000:]}\n{ray_log_tracebacks(cluster.temp_dir)}"
    assert local_run.wait(timeout=600) == 0, (root / "local.log").read_text()[-4000:]
    _phase(root, "local run done")
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


@pytest.fixture(scope="module")
def cache_hit_run(runs, prefect_server, root):
    """A local run in the Ray run's state folder, started when the Ray run is done; it overlaps
    the deployment run (its test checks it)."""
    proc = _popen_run(root, "again", root / "ray", prefect_server.url)
    yield proc
    _kill(proc)


def _wait_no_children(pid: int, timeout_s: float) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        kids = [c for f in Path(f"/proc/{pid}/task").glob("*/children") for c in f.read_text().split()]
        if not kids:
            return
        time.sleep(0.5)


def _final(base: str, fr_id: str) -> dict | None:
    r = api(base, "GET", f"/flow_runs/{fr_id}").json()
    return r if r["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") else None


def test_a_deployment_run_of_serve_flows_runs_its_fan_out_tasks_on_the_cluster(cache_hit_run, cluster, prefect_server,
                                                                              runs, root):
    from ray.util.state import list_jobs

    from tasks.executor import ROOT_FLOW_RUN_KEY

    base, state, log = prefect_server.url, root / "served", root / "serve-flows.log"
    _phase(root, "serve-flows starts")
    serve = start_serve_flows(state, log, "--recipe", "smoke", POSTTRAIN_PREFECT_API_URL=base, POSTTRAIN_EXECUTOR="ray",
                              POSTTRAIN_RAY_ADDRESS=cluster.address, PREFECT_RUNNER_POLL_FREQUENCY="2",
                              OMP_WAIT_POLICY="PASSIVE", PYTHONPATH=str(REPO), **RAY_ENV)
    try:
        dep = wait_for("recurring-retrain registered", lambda: deployment(base, "recurring-retrain"), 300,
                       explain=lambda: log.read_text(errors="replace")[-3000:])
        # The scheduled retrain's deployment, started as the UI's "Run" does, up to the sharded stage.
        run = api(base, "POST", f"/deployments/{dep['id']}/create_flow_run", {"parameters": {
            "stages": ["estimate_difficulty"], "overrides": ["estimate_difficulty.shards=2"]}}).json()
        assert "id" in run, run
        _phase(root, "deployment run created")
        done = wait_for("the deployment run to finish", lambda: _final(base, run["id"]), 420, every_s=2,
                        explain=lambda: log.read_text(errors="replace")[-3000:])
        _phase(root, "deployment run done")
        # SIGTERM while the run's process still talks to serve-flows' control channel makes
        # Prefect's runner log a CancelledError: stop it once that process has exited.
        _wait_no_children(serve.pid, 60)
    finally:
        code = stop(serve, signal.SIGTERM, timeout_s=90)
    text = log.read_text(errors="replace")
    assert done["state"]["type"] == "COMPLETED", (done["state"], text[-3000:], ray_log_tracebacks(cluster.temp_dir))
    # Ray's state API: the Ray job of this run (its post-training subflow is the driver) ran both
    # shards of the difficulty stage to FINISHED on the cluster's node left alive (the head).
    jobs = [j.job_id for j in list_jobs(address=cluster.address, detail=True)
            if (j.metadata or {}).get(ROOT_FLOW_RUN_KEY) == run["id"]]
    assert len(jobs) == 1, [(j.job_id, j.metadata) for j in list_jobs(address=cluster.address, detail=True)]
    mine = [t for t in _tasks(cluster.address) if t.job_id == jobs[0] and t.name in FAN_OUT]
    assert {t.name for t in mine} == {"estimate_difficulty_shard"}, [(t.name, t.state) for t in mine]
    assert len({t.task_id for t in mine if t.state == "FINISHED"}) == 2, [(t.name, t.state, t.node_id) for t in mine]
    assert {t.node_id for t in mine} == {runs["head"]}
    # On Ray the shards claim Ray's resources, not the one-slot Prefect `gpu` tag limit that
    # serve-flows sets (which would hold a cluster's fan-out tasks to one at a time).
    subs = api(base, "POST", "/flow_runs/filter", {"flow_runs": {"parent_flow_run_id": {"any_": [run["id"]]}}}).json()
    trs = api(base, "POST", "/task_runs/filter", {"flow_runs": {"id": {"any_": [s["id"] for s in subs]}}}).json()
    shards = [r for r in trs if r["name"].startswith("estimate_difficulty[")]
    assert len(shards) == 2 and all("gpu" not in r["tags"] for r in shards), [(r["name"], r["tags"]) for r in trs]
    assert code == 0 and tracebacks(log) == [], text[-3000:]


def test_executor_ray_without_a_reachable_cluster_fails_before_work_in_one_line(tmp_path):
    cases = ((SMOKE, {}, ("POSTTRAIN_RAY_ADDRESS is not set",)),
             (SMOKE, {"POSTTRAIN_RAY_ADDRESS": "127.0.0.1:9"}, ("does not answer", "127.0.0.1:9", "ray start")),
             (["serve-flows", "--recipe", "smoke"], {}, ("POSTTRAIN_RAY_ADDRESS is not set",)))
    procs = [subprocess.Popen([POSTTRAIN, *cmd], env=_env(tmp_path / "state", POSTTRAIN_EXECUTOR="ray", **extra), cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for cmd, extra, _ in cases]
    for proc, (_cmd, _extra, words) in zip(procs, cases):  # three shells at once
        _out, err = proc.communicate(timeout=300)
        lines = err.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, err[-3000:]
        assert all(w in lines[0] for w in words), lines[0]
    assert not (tmp_path / "state" / "artifacts").exists() or not any((tmp_path / "state" / "artifacts").iterdir())


def test_what_the_cluster_computed_is_a_cache_hit_for_a_local_run(cache_hit_run, runs, root):
    rc = cache_hit_run.wait(timeout=600)
    _phase(root, "cache-hit run done")
    assert rc == 0, (root / "again.log").read_text()[-3000:]
    again = json.loads((root / "again.json").read_text())
    assert all(s["cached"] for s in again["stages"].values()), {k: s["cached"] for k, s in again["stages"].items()}
    assert _digests(again) == _digests(runs["ray"])
