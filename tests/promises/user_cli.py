"""Run ``posttrain`` the way a user does: the console script in a subprocess, its own state folder,
the ephemeral Prefect server (nothing answers on the API URL it is given), sqlite MLflow."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
POSTTRAIN = str(Path(sys.executable).with_name("posttrain"))


def env_for(state: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "POSTTRAIN_"))}
    env.update(POSTTRAIN_STATE_DIR=str(state), POSTTRAIN_PREFECT_API_URL="http://127.0.0.1:9/api",
               OMP_WAIT_POLICY="PASSIVE", **extra)
    return env


def posttrain(args: list[str], state: Path, cwd: Path = REPO, timeout: float = 900, **extra: str):
    return subprocess.run([POSTTRAIN, *args], env=env_for(state, **extra), cwd=cwd, timeout=timeout,
                          capture_output=True, text=True)


def start(args: list[str], state: Path, cwd: Path = REPO, **extra: str) -> subprocess.Popen:
    """A run in its own process group, so a test can kill it and every child at once."""
    return subprocess.Popen([POSTTRAIN, *args], env=env_for(state, **extra), cwd=cwd, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def kill_group(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def wait_until(cond, proc: subprocess.Popen | None = None, timeout: float = 900, every: float = 0.02) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return True
        if proc is not None and proc.poll() is not None:
            return bool(cond())
        time.sleep(every)
    return False


def query(db: Path, sql: str, args: tuple = ()) -> list[tuple]:
    """Rows from a sqlite database another process is writing (empty when it does not exist yet)."""
    if not db.exists():
        return []
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return con.execute(sql, args).fetchall()
    except sqlite3.OperationalError:  # tables not created yet
        return []
    finally:
        con.close()


def prefect_db(state: Path) -> Path:
    return state / "prefect" / "prefect.db"


def mlflow_db(state: Path) -> Path:
    return state / "mlflow.db"


def flow_run_states(state: Path) -> dict[str, str]:
    """Prefect flow run name -> state type, read from the state folder's Prefect database."""
    return dict(query(prefect_db(state), "select name, state_type from flow_run"))
