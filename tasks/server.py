"""Reach the Prefect API before a run starts, one process of a state folder at a time.

With no Prefect server to use (``PREFECT_API_URL`` unset: no ``posttrain ui``, no reachable
``POSTTRAIN_PREFECT_API_URL``), this process starts Prefect's ephemeral API server itself: the
same app, settings and command Prefect's ephemeral mode runs (``python -m uvicorn --factory
prefect.server.api.server:create_app``, services of an ephemeral server only, no UI), stopped
when this process exits; its output goes to ``<state>/logs/prefect-server.log``. Started by ``begin_prefect_api`` as soon as a command's pre-flight
checks have passed, it boots (about 20 s on 2 cores) while this process imports the flow;
and this process never imports Prefect's server package, which Prefect's own ephemeral mode
imports in the client too. The port is reserved before the server binds it, so nothing can
take it meanwhile.

Two processes that each start a server on one fresh sqlite database both run its migrations
and one fails ("table block_type already exists"). Starting the server under a file lock in the
state folder lets the first one migrate; the second then finds the tables.
"""

from __future__ import annotations

import atexit
import fcntl
import importlib.util
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from components.settings import answers

# What Prefect's SubprocessASGIServer sets for its ephemeral server process.
_EPHEMERAL_ENV = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}


def _reserve_port() -> socket.socket:
    """A bound, not listening, SO_REUSEADDR socket on a free loopback port: no other socket can
    bind the port while it is open, but uvicorn (which also sets SO_REUSEADDR) can listen on it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def _die_with_parent() -> None:
    """In the server's child process, before exec: Linux sends it SIGTERM when the process that
    started it dies, however it dies (``kill -9`` of ``posttrain run`` skips every atexit handler,
    and a plain ``kill`` too: Python's default SIGTERM action runs none)."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # 1 = PR_SET_PDEATHSIG


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class PrefectAPI:
    """The Prefect API of this process: being started (``begin_prefect_api``), ready after ``wait``."""

    def __init__(self, lock_dir: Path):
        lock_dir.mkdir(parents=True, exist_ok=True)
        self._lock = open(lock_dir / "prefect-db.flock", "w")  # noqa: SIM115 - released in wait()
        self.log_path = lock_dir.parent / "logs" / "prefect-server.log"
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        self.proc: subprocess.Popen | None = None
        self._port: socket.socket | None = None
        # Once prefect is imported its settings are fixed: then Prefect's own ephemeral mode starts it.
        if "PREFECT_API_URL" not in os.environ and "prefect.context" not in sys.modules:
            self._start_server()

    def _start_server(self) -> None:
        self._port = _reserve_port()
        port = self._port.getsockname()[1]
        prefect_dir = Path(importlib.util.find_spec("prefect").origin).parent  # type: ignore[union-attr, arg-type]
        env = {**os.environ, **_EPHEMERAL_ENV}
        # The server's output goes to a log file, not the user's terminal: on sqlite it logs a
        # traceback for each write that met another writer ("database is locked"; upstream
        # PrefectHQ/prefect#18934: the write is retried and the run goes on).
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child holds it; ours closes below
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--app-dir", str(prefect_dir.parent), "--factory",
             "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(port),
             "--log-level", "error", "--lifespan", "on"],
            env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,  # started from the main thread, which lives as long as the CLI
        )
        log.close()
        atexit.register(_stop, self.proc)
        # Set before this process imports prefect (its settings are read then); children inherit it.
        os.environ["PREFECT_API_URL"] = f"http://127.0.0.1:{port}/api"
        # An ephemeral server has no UI: no UI links inferred from the API URL (as in Prefect's mode).
        os.environ.setdefault("PREFECT_UI_URL", "")

    def _wait_server(self) -> None:
        assert self.proc is not None and self._port is not None
        url = os.environ["PREFECT_API_URL"] + "/health"
        deadline = time.monotonic() + float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "20"))
        try:
            while not answers(url, timeout_s=2):
                if self.proc.poll() is not None:
                    raise RuntimeError(f"the ephemeral Prefect server exited with code {self.proc.returncode} "
                                       f"before it answered at {url}; its log: {self.log_path}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"timed out waiting for the ephemeral Prefect server at {url}; "
                                       f"its log: {self.log_path}")
                time.sleep(0.1)
        finally:
            self._port.close()

    def wait(self) -> None:
        """Block until the API answers (the server has migrated its database), then let the next
        process of this state folder start its own."""
        try:
            if self.proc is not None:
                self._wait_server()
            from prefect.client.orchestration import get_client

            with get_client(sync_client=True) as client:
                client.api_healthcheck()
        finally:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()


def begin_prefect_api(lock_dir: Path) -> PrefectAPI:
    """Start reaching the Prefect API (call after ``configure_process_env``, before importing prefect)."""
    return PrefectAPI(lock_dir)


def ensure_prefect_api(lock_dir: Path, started: PrefectAPI | None = None) -> None:
    (started or begin_prefect_api(lock_dir)).wait()
