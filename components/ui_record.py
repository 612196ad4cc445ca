"""``<state>/ui.json``: which Prefect and MLflow servers ``posttrain ui`` serves for a state folder.

One Prefect server per state folder: ``posttrain ui`` writes this record once both servers
answer and removes it when it stops; ``run``, ``serve-flows`` and flow-run processes read it
(``components.settings.configure_process_env``) and use that server instead of starting an
ephemeral one on the same database. Standard library only (read before Prefect is imported).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from components.runowners import pid_alive  # noqa: F401 - re-exported for callers

NAME = "ui.json"


def record_path(state: Path) -> Path:
    return Path(state) / NAME


def write_record(state: Path, host: str, prefect_port: int, mlflow_port: int, server_pids: dict[str, int]) -> dict:
    """Atomically record the URLs this process serves (``pid`` is the ``posttrain ui`` process);
    written once before the servers start (no ``server_pids`` yet) and again once they answer."""
    rec = {
        "pid": os.getpid(),
        "prefect_ui_url": f"http://{host}:{prefect_port}",
        "prefect_api_url": f"http://{host}:{prefect_port}/api",
        "mlflow_ui_url": f"http://{host}:{mlflow_port}",
        "server_pids": server_pids,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    path = record_path(state)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(rec, indent=2))
    tmp.replace(path)
    return rec


def read_record(state: Path) -> dict | None:
    """The record when its ``posttrain ui`` process is still alive, else None (a stale file is
    left from a killed UI; it is ignored and replaced by the next ``posttrain ui``)."""
    try:
        rec = json.loads(record_path(state).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(rec, dict) or not isinstance(rec.get("pid"), int) or not pid_alive(rec["pid"]):
        return None
    return rec


def remove_record(state: Path) -> None:
    """Remove the record if it is this process's own."""
    path = record_path(state)
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass


def env_lines(rec: dict, state: Path) -> list[str]:
    """What to export in another shell so that ``prefect worker``, ``prefect`` CLI calls and
    posttrain commands use these servers (posttrain finds them through ui.json anyway)."""
    return [f"export POSTTRAIN_STATE_DIR={Path(state).resolve()}",
            f"export PREFECT_API_URL={rec['prefect_api_url']}",
            f"export POSTTRAIN_MLFLOW_UI_URL={rec['mlflow_ui_url']}"]
