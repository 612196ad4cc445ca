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
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
POSTTRAIN = str(BIN / "posttrain")
RAY = str(BIN / "ray")
SMOKE = ["run", "--recipe", "smoke", "--set", "estimate_difficulty.shards=2"]
FAN_OUT = {"estimate_difficulty_shard", "compress", "evaluate_passes"}  # Ray task names (Prefect task names)


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


# A loopback-only cluster of this test: no token auth (Ray turns it on by itself when some other
# session left a ~/.ray/auth_token, and then the second node cannot join).
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def _env(state: Path | None = None, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "POSTTRAIN_", "RAY_"))}
    env.update(OMP_WAIT_POLICY="PASSIVE", PYTHONPATH=str(REPO), **RAY_ENV, **extra)
    if state is not None:
        env.update(POSTTRAIN_STATE_DIR=str(state), POSTTRAIN_PREFECT_API_URL="http://127.0.0.1:9/api")
    return env


def ray_log_tracebacks(temp_dir: Path, limit: int = 6000) -> str:
    """The tracebacks in Ray's session logs (workers, raylets, GCS), for a failing check's message."""
    out = []
    for f in sorted(temp_dir.glob("session_*/logs/*")):
        if f.suffix in (".err", ".out", ".log") and f.is_file():
            text = f.read_text(errors="replace")
            if "Traceback" in text:
                out.append(f"--- {f.name}\n{text[text.index('Traceback'):][:1500]}")
    return "\n".join(out)[-limit:] or "(no traceback in Ray's logs)"


class Node:
    """One ``ray start`` (head or joined), its daemons in one process group of its own."""

    def __init__(self, args: list[str], temp_dir: Path):
        ports = _free_ports(9)
        cmd = [RAY, "start", "--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--disable-usage-stats",
               "--node-manager-port", str(ports[0]), "--object-manager-port", str(ports[1]),
               "--dashboard-agent-listen-port", str(ports[2]), "--dashboard-agent-grpc-port", str(ports[3]),
               "--metrics-export-port", str(ports[4]), "--runtime-env-agent-port", str(ports[5]),
               "--min-worker-port", "0", "--max-worker-port", "0", *args]
        self.proc = subprocess.Popen(cmd, env=_env(DASHBOARD_METRIC_PORT=str(ports[6])), start_new_session=True, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.pgid = self.proc.pid
        out, _ = self.proc.communicate(timeout=240)
        assert self.proc.returncode == 0, f"ray start failed:\n{out[-3000:]}\n{ray_log_tracebacks(temp_dir)}"

    def kill(self) -> None:
        try:
            os.killpg(self.pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def cluster():
    temp_dir = Path(tempfile.mkdtemp(prefix="r17-", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    gcs, client, dash = _free_ports(3)
    nodes: list[Node] = []
    saved = {k: os.environ.get(k) for k in RAY_ENV}
    os.environ.update(RAY_ENV)  # this process reads Ray's state API
    try:
        nodes.append(Node(["--head", "--port", str(gcs), "--temp-dir", str(temp_dir), "--ray-client-server-port",
                           str(client), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash)], temp_dir))
        nodes.append(Node(["--address", f"127.0.0.1:{gcs}"], temp_dir))
        yield {"address": f"127.0.0.1:{gcs}", "temp_dir": temp_dir, "head": nodes[0], "second": nodes[1]}
    finally:
        for n in reversed(nodes):
            n.kill()
        shutil.rmtree(temp_dir, ignore_errors=True)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _nodes(address: str) -> dict[str, str]:
    """node id -> the port of its raylet (node manager), alive nodes only."""
    from ray.util.state import list_nodes

    return {n.node_id: n for n in list_nodes(address=address, filters=[("state", "=", "ALIVE")])}


def _tasks(address: str) -> list:
    from ray.util.state import list_tasks

    return list(list_tasks(address=address, detail=True, limit=10_000, raise_on_missing_output=False))


@pytest.fixture(scope="module")
def runs(cluster, tmp_path_factory):
    """A local run (started first, it overlaps the cluster's start-up) and a Ray run during which the
    second node is killed while it runs a fan-out task."""
    root = tmp_path_factory.mktemp("ray-runs")
    local = subprocess.Popen([POSTTRAIN, *SMOKE, "--summary", str(root / "local.json")], env=_env(root / "local"),
                             cwd=REPO, stdout=open(root / "local.log", "w"), stderr=subprocess.STDOUT)
    address = cluster["address"]
    deadline = time.time() + 120
    while len(_nodes(address)) < 2 and time.time() < deadline:
        time.sleep(1)
    nodes = _nodes(address)
    assert len(nodes) == 2, f"the second node did not join: {nodes}"
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
            cluster["second"].kill()  # the raylet and its workers, mid-task
            killed_task = busy[0]
        time.sleep(0.5)
    rc = proc.wait(timeout=600)
    assert rc == 0, f"ray run failed: {(root / 'ray.log').read_text()[-4000:]}\n{ray_log_tracebacks(cluster['temp_dir'])}"
    assert local.wait(timeout=600) == 0, (root / "local.log").read_text()[-4000:]
    return {"local": json.loads((root / "local.json").read_text()), "ray": json.loads((root / "ray.json").read_text()),
            "head": head_id, "second": second_id, "killed": killed_task, "tasks": _tasks(address)}


def _digests(summary: dict) -> dict[str, str]:
    return {f"{stage}/{name}": ref["sha256"] for stage, s in summary["stages"].items() for name, ref in s["outputs"].items()}


def test_ray_run_has_the_local_runs_digests(runs):
    local, ray_run = runs["local"], runs["ray"]
    assert list(ray_run["stages"]) == list(local["stages"])
    assert not any(s["cached"] for s in ray_run["stages"].values())  # computed, in a state folder of its own
    assert _digests(ray_run) == _digests(local)
    assert {s for s in ray_run["stages"] if s.startswith(("estimate_difficulty:", "compress:", "evaluate_passes:"))}


def test_fan_out_tasks_ran_on_both_nodes_of_the_cluster(runs):
    fan = [t for t in runs["tasks"] if t.name in FAN_OUT]
    finished = [t for t in fan if t.state == "FINISHED"]
    # every fan-out stage of the run is a finished Ray task (a killed attempt is retried)
    n_fan = sum(1 for s in runs["ray"]["stages"] if s.startswith(("estimate_difficulty:", "compress:", "evaluate_passes:")))
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
