"""Which process owns which runs: one small file per live process in ``<state>/runs``.

A run records its Prefect flow run ids and MLflow run ids here with the pid and host that
hold them; the file is removed when the process ends its runs normally. A file whose process
no longer exists (same host, dead pid) names runs that were killed: ``reconcile`` marks them
crashed. Pids are only meaningful on their own machine, so files of other hosts are left alone.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path

_lock = threading.Lock()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


@dataclass
class Owner:
    path: Path
    pid: int
    host: str
    flow_runs: list[str] = field(default_factory=list)
    mlflow_runs: list[str] = field(default_factory=list)

    @property
    def local(self) -> bool:
        return self.host == socket.gethostname()

    @property
    def dead(self) -> bool:
        return self.local and self.pid != os.getpid() and not pid_alive(self.pid)


def runs_dir(state: Path) -> Path:
    return Path(state) / "runs"


def _own_path(state: Path) -> Path:
    return runs_dir(state) / f"{socket.gethostname()}-{os.getpid()}.json"


def record(state: Path, flow_run: str | None = None, mlflow_run: str | None = None) -> None:
    """Add run ids to this process's owner file (atomically: readers see the old or the new file)."""
    path = _own_path(state)
    with _lock:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = json.loads(path.read_text()) if path.exists() else {
            "pid": os.getpid(), "host": socket.gethostname(), "flow_runs": [], "mlflow_runs": []}
        if flow_run and flow_run not in data["flow_runs"]:
            data["flow_runs"].append(flow_run)
        if mlflow_run and mlflow_run not in data["mlflow_runs"]:
            data["mlflow_runs"].append(mlflow_run)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)


def release(state: Path, flow_run: str | None = None, mlflow_run: str | None = None) -> None:
    """Forget run ids that ended normally; the file goes when it names none."""
    path = _own_path(state)
    with _lock:
        if not path.exists():
            return
        data = json.loads(path.read_text())
        data["flow_runs"] = [r for r in data["flow_runs"] if r != flow_run]
        data["mlflow_runs"] = [r for r in data["mlflow_runs"] if r != mlflow_run]
        if data["flow_runs"] or data["mlflow_runs"]:
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(json.dumps(data))
            os.replace(tmp, path)
        else:
            path.unlink(missing_ok=True)


def owners(state: Path) -> list[Owner]:
    out = []
    for p in sorted(runs_dir(state).glob("*.json")):
        try:
            d = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        out.append(Owner(p, int(d["pid"]), str(d["host"]), list(d.get("flow_runs", [])), list(d.get("mlflow_runs", []))))
    return out
