"""A real local Ray cluster for tests and benchmarks: ``ray start --head`` on 127.0.0.1 and nodes
joined to it, one CPU each, every port chosen free, Ray's temp folder of its own.

Each ``ray start`` runs in a process group of its own (its daemons stay in it), and the cluster
is stopped by killing exactly those groups: ``ray stop --force`` would stop every Ray cluster of
the machine, other sessions' too.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
RAY = str(BIN / "ray")
# A loopback-only cluster: no token auth (Ray turns it on by itself when another session left a
# ~/.ray/auth_token, and then a second node cannot join a head that has none).
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def free_ports(n: int) -> list[int]:
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


def clean_env() -> dict:
    """This process's environment without Prefect, posttrain or Ray settings."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "POSTTRAIN_", "RAY_"))}


def ray_log_tracebacks(temp_dir: Path, limit: int = 6000) -> str:
    """The tracebacks in Ray's session logs (workers, raylets, GCS), for a failing check's message."""
    out = []
    for f in sorted(Path(temp_dir).glob("session_*/logs/*")):
        if f.suffix in (".err", ".out", ".log") and f.is_file():
            text = f.read_text(errors="replace")
            if "Traceback" in text:
                out.append(f"--- {f.name}\n{text[text.index('Traceback'):][:1500]}")
    return "\n".join(out)[-limit:] or "(no traceback in Ray's logs)"


class Node:
    """One ``ray start`` (head or joined) and its process group."""

    def __init__(self, args: list[str], temp_dir: Path, env: dict):
        ports = free_ports(7)
        cmd = [RAY, "start", "--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--disable-usage-stats",
               "--node-manager-port", str(ports[0]), "--object-manager-port", str(ports[1]),
               "--dashboard-agent-listen-port", str(ports[2]), "--dashboard-agent-grpc-port", str(ports[3]),
               "--metrics-export-port", str(ports[4]), "--runtime-env-agent-port", str(ports[5]),
               "--min-worker-port", "0", "--max-worker-port", "0", *args]
        proc = subprocess.Popen(cmd, env={**env, **RAY_ENV, "DASHBOARD_METRIC_PORT": str(ports[6])},
                                start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.pgid = proc.pid
        out, _ = proc.communicate(timeout=300)
        if proc.returncode != 0:
            self.kill()
            raise RuntimeError(f"ray start failed:\n{out[-3000:]}\n{ray_log_tracebacks(temp_dir)}")

    def kill(self) -> None:
        """SIGKILL the node's daemons (raylet, and for the head GCS, dashboard) and their workers."""
        try:
            os.killpg(self.pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class RayCluster:
    def __init__(self, temp_dir: Path, env: dict | None = None):
        self.temp_dir = Path(temp_dir)  # keep it short: Ray's socket paths must fit in 107 bytes
        self.env = {**(env or clean_env())}
        self.nodes: list[Node] = []
        self.address = ""

    def start_head(self) -> "RayCluster":
        gcs, client, dash = free_ports(3)
        self.nodes.append(Node(["--head", "--port", str(gcs), "--temp-dir", str(self.temp_dir),
                                "--ray-client-server-port", str(client), "--dashboard-host", "127.0.0.1",
                                "--dashboard-port", str(dash)], self.temp_dir, self.env))
        self.address = f"127.0.0.1:{gcs}"
        return self

    def join_node(self) -> Node:
        self.nodes.append(Node(["--address", self.address], self.temp_dir, self.env))
        return self.nodes[-1]

    def alive_nodes(self) -> dict:
        """node id -> Ray's NodeState, alive nodes only (Ray's state API: no driver needed)."""
        from ray.util.state import list_nodes

        return {n.node_id: n for n in list_nodes(address=self.address, filters=[("state", "=", "ALIVE")])}

    def wait_nodes(self, n: int, timeout_s: float = 120) -> dict:
        deadline = time.time() + timeout_s
        nodes = self.alive_nodes()
        while len(nodes) < n and time.time() < deadline:
            time.sleep(1)
            nodes = self.alive_nodes()
        if len(nodes) < n:
            raise RuntimeError(f"{len(nodes)} of {n} Ray nodes alive after {timeout_s}s")
        return nodes

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.kill()
        self.nodes.clear()
