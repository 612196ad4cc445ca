"""Start the Prefect and MLflow UIs on 127.0.0.1 with their databases in the state folder.

Once both answer, ``<state>/ui.json`` records their URLs (``components.ui_record``): ``posttrain
run``, ``serve-flows`` and flow-run processes then use this Prefect server, so there is one
server per state folder; without a live UI they use Prefect's ephemeral mode on the same database.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from components import ui_record
from components.settings import Settings, answers

PREFECT_PORT = 4200
MLFLOW_PORT = 5000


def server_commands(settings: Settings, host: str = "127.0.0.1", prefect_port: int = PREFECT_PORT,
                    mlflow_port: int = MLFLOW_PORT) -> dict[str, list[str]]:
    bindir = Path(sys.executable).parent
    state = settings.state_path
    return {
        "prefect": [str(bindir / "prefect"), "server", "start", "--host", host, "--port", str(prefect_port)],
        "mlflow": [str(bindir / "mlflow"), "server", "--backend-store-uri", settings.tracking_uri,
                   "--default-artifact-root", str(state / "mlruns"), "--host", host, "--port", str(mlflow_port),
                   "--workers", "1"],
    }


def start_uis(settings: Settings, host: str = "127.0.0.1", prefect_port: int = PREFECT_PORT,
              mlflow_port: int = MLFLOW_PORT, wait_s: float = 300.0) -> dict[str, subprocess.Popen]:
    env = dict(os.environ)
    env["PREFECT_HOME"] = str(settings.state_path / "prefect")
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    env.pop("PREFECT_API_URL", None)
    # The UI's JavaScript calls this URL; Prefect's default is port 4200 whatever --port says.
    env["PREFECT_UI_API_URL"] = f"http://{host}:{prefect_port}/api"
    logs = settings.state_path / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    state = settings.state_path
    live = ui_record.read_record(state)
    if live is not None:
        raise RuntimeError(f"`posttrain ui` (pid {live['pid']}) already serves {state}: Prefect "
                           f"{live['prefect_ui_url']}, MLflow {live['mlflow_ui_url']}; one Prefect server per state folder")
    # Recorded before the servers start: a `run` in another shell waits for this server
    # instead of starting an ephemeral one on the same database meanwhile.
    ui_record.write_record(state, host, prefect_port, mlflow_port, {})
    procs = {}
    for name, cmd in server_commands(settings, host, prefect_port, mlflow_port).items():
        log = open(logs / f"{name}-ui.log", "ab")
        procs[name] = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    urls = {"prefect": f"http://{host}:{prefect_port}/api/health", "mlflow": f"http://{host}:{mlflow_port}/health"}
    deadline = time.time() + wait_s
    pending = set(urls)
    while pending and time.time() < deadline:
        for n in list(pending):
            if procs[n].poll() is not None:
                stop_uis(procs, state=state)
                raise RuntimeError(f"{n} server exited; see {logs / (n + '-ui.log')}")
            if answers(urls[n]):
                pending.discard(n)
        time.sleep(1.0)
    if pending:
        stop_uis(procs, state=state)
        raise RuntimeError(f"{sorted(pending)} did not answer within {wait_s:.0f}s; logs in {logs}")
    ui_record.write_record(state, host, prefect_port, mlflow_port, {n: p.pid for n, p in procs.items()})
    return procs


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def stop_uis(procs: dict[str, subprocess.Popen], timeout_s: float = 30.0, state: Path | None = None) -> None:
    """SIGTERM each server's process group and wait for the whole group: the MLflow server's
    job runners and Prefect's uvicorn outlive their leader by seconds. SIGKILL what is left.
    With ``state``, first drop this process's ``ui.json`` so nothing new picks these servers."""
    if state is not None:
        ui_record.remove_record(state)
    for p in procs.values():
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.time() + timeout_s
    for p in procs.values():
        try:
            p.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            pass
    while time.time() < deadline and any(group_alive(p.pid) for p in procs.values()):
        time.sleep(0.2)
    for p in procs.values():
        if group_alive(p.pid):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()
