"""Processes the operate tests drive as a user would: `posttrain ui` and `posttrain serve-flows`
in other "shells" (subprocesses), and a look at /proc for Prefect servers on a database."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
POSTTRAIN = str(Path(sys.executable).parent / "posttrain")


def clean_env(state: Path, **extra: str) -> dict:
    """A new shell's environment: no PREFECT_*/POSTTRAIN_* but the state folder."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "POSTTRAIN_"))}
    return {**env, "POSTTRAIN_STATE_DIR": str(state), **extra}


def wait_for(what: str, fn, timeout_s: float, every_s: float = 1.0, explain=None):
    """fn() until it is truthy; on timeout, the error carries ``explain()`` (what the test saw)."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        got = fn()
        if got:
            return got
        time.sleep(every_s)
    raise TimeoutError(f"{what}: not within {timeout_s:.0f}s" + (f"\n{explain()}" if explain else ""))


def active_runs(base: str) -> str:
    """The server's flow runs that are not final, one line each (what a stuck run waits behind)."""
    body = {"flow_runs": {"state": {"type": {"any_": ["SCHEDULED", "PENDING", "RUNNING"]}}}}
    runs = api(base, "POST", "/flow_runs/filter", body).json()
    return "\n".join(f"  {r['name']} {r['state']['type']}/{r['state']['name']} expected {r['expected_start_time']}"
                     f" deployment {r['deployment_id']}" for r in runs[:20])


def start_ui(state: Path, prefect_port: int, mlflow_port: int) -> tuple[subprocess.Popen, list[str]]:
    """`posttrain ui` on the given ports; returns once it printed its banner (both servers up)."""
    proc = subprocess.Popen([POSTTRAIN, "ui", "--prefect-port", str(prefect_port), "--mlflow-port", str(mlflow_port)],
                            env=clean_env(state), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    lines = []
    for line in proc.stdout:
        lines.append(line.rstrip())
        if line.startswith("Ctrl-C"):
            return proc, lines
    proc.wait()
    raise RuntimeError("posttrain ui exited:\n" + "\n".join(lines[-40:]))


def stop(proc: subprocess.Popen, sig: int = signal.SIGINT, timeout_s: float = 120) -> int:
    """Signal the process itself (not its group, as a `kill PID` from another shell does)."""
    if proc.poll() is None:
        os.kill(proc.pid, sig)
    try:
        return proc.wait(timeout=timeout_s)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever it left behind
        except ProcessLookupError:
            pass


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def start_serve_flows(state: Path, log: Path, *args: str, **env: str) -> subprocess.Popen:
    """`posttrain serve-flows` as a background job of a non-interactive shell (`cmd &`), which
    starts it with SIGINT ignored."""
    out = open(log, "wb")
    try:
        return subprocess.Popen([POSTTRAIN, "serve-flows", *args], env=clean_env(state, **env), cwd=REPO,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=_ignore_sigint)
    finally:
        out.close()


def prefect_servers(prefect_home: Path) -> list[int]:
    """Pids of Prefect API servers (`prefect server start`, or the ephemeral server's uvicorn)
    running on the database in ``prefect_home``."""
    pids = []
    for d in Path("/proc").glob("[0-9]*"):
        try:
            cmd = (d / "cmdline").read_bytes().split(b"\0")
            environ = (d / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        text = b" ".join(cmd)
        is_server = (b"prefect" in text and b"server" in text and b"start" in text) or b"prefect.server.api" in text
        if is_server and f"PREFECT_HOME={prefect_home}".encode() in environ:
            pids.append(int(d.name))
    return pids


def api(base: str, method: str, path: str, body: dict | None = None) -> httpx.Response:
    """One REST call; a 503 (the server's answer to sqlite write contention on a loaded machine)
    is retried as Prefect's own client does, and so is a read (GET, ``/filter``) that timed out
    (seen on CI: a filter waited over 30 s while serve-flows registered its deployments beside a
    run). A write that timed out is not retried: it may have happened."""
    read_only = method == "GET" or path.endswith("/filter")
    for attempt in range(5):
        try:
            r = httpx.request(method, f"{base}{path}", json=body, timeout=30)
        except httpx.TimeoutException:
            if not read_only or attempt == 4:
                raise
            continue
        if r.status_code != 503:
            return r
        time.sleep(2.0)
    return r


def deployment(base: str, name: str) -> dict | None:
    found = [d for d in api(base, "POST", "/deployments/filter", {}).json() if d["name"] == name]
    return found[0] if found else None


def flow_runs(base: str, deployment_id: str) -> list[dict]:
    body = {"flow_runs": {"deployment_id": {"any_": [deployment_id]}}}
    return api(base, "POST", "/flow_runs/filter", body).json()


# Prefect on sqlite: a read-then-write transaction that meets another writer fails at once with
# SQLITE_BUSY (WAL snapshot), whatever the busy timeout; the server logs it and the client retries
# the state change. Seen on a loaded 2-core machine while the scheduler inserted a minute-by-minute
# batch of runs; every other traceback fails the test.
SQLITE_CONTENTION = "OperationalError: database is locked"


def tracebacks(log: Path) -> list[str]:
    """Each traceback in a server log (the exception chain up to its final error line), except
    sqlite write contention."""
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    out, i = [], 0
    while i < len(lines):
        if not lines[i].startswith("Traceback"):
            i += 1
            continue
        j = i
        while j < len(lines) and (lines[j].startswith(("Traceback", " ", "The above", "During handling")) or not lines[j]
                                  or not re.match(r"^[\w.]+(Error|Exception|Exit)\b", lines[j])):
            j += 1
        block = "\n".join(lines[i:j + 1])
        final = lines[min(j, len(lines) - 1)].replace("(sqlite3.OperationalError) ", "")
        if SQLITE_CONTENTION not in final:
            out.append(block)
        i = j + 1
    return out


# Debian's chromium as Playwright drives it here (never a downloaded browser), and MLflow's UI in its
# classic "Model training" view with the assistant panel closed.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1400, "height": 900}
MLFLOW_UI_PREFS = ("localStorage.setItem('mlflow.workflowType_v1', JSON.stringify('machine_learning'));"
                   "localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');"
                   "localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');")
