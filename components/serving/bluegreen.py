"""Blue/green deployment of vLLM servers: switch versions without a failed request.

Each named deployment owns two ports (blue, green). A new version starts on the idle port, must
answer ``/health`` and a smoke chat completion through the ``openai`` client, and only then is it
recorded in the JSON state file (which clients read to find the endpoint) and the old server is
drained and stopped. If anything fails before the switch, the new server is stopped and the old
one keeps serving. The state file, not this object, is the source of truth, so another process
(a later flow run, a CLI) can list or stop what an earlier one deployed.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from components.serving.vllm_server import (
    SERVER_MODULE,
    ServerError,
    StartupStalled,
    VLLMServer,
    VLLMServerConfig,
    find_free_port,
    pid_alive,
    stop_process_group,
)

Color = Literal["blue", "green"]
DEFAULT_SMOKE = [{"role": "user", "content": "Say hello."}]


class DeployError(ServerError):
    """The new version did not come up; the previous deployment (if any) is still serving."""


class Deployment(BaseModel):
    """One running server as recorded in the state file."""

    model_config = ConfigDict(extra="forbid")

    name: str
    endpoint: str  # OpenAI base URL, http://host:port/v1
    port: int
    pid: int
    color: Color
    model_version: str
    model_dir: str
    served_model_name: str
    started_at: str
    log_path: str
    startup_s: float
    smoke_latency_s: float
    smoke_completion_tokens: int
    smoke_tokens_per_s: float


class _State(BaseModel):
    model_config = ConfigDict(extra="forbid")

    deployments: dict[str, Deployment] = {}
    ports: dict[str, tuple[int, int]] = {}


def is_vllm_server(pid: int) -> bool:
    """Alive and still a vLLM server (guards against a recycled pid in an old state file)."""
    if not pid_alive(pid):
        return False
    try:
        return SERVER_MODULE.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc: trust the pid


def port_free(host: str, port: int) -> bool:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


class BlueGreenDeployer:
    """Deploy model versions behind stable names with zero-downtime switch-over."""

    def __init__(
        self,
        state_file: str | Path,
        server_cfg: VLLMServerConfig | None = None,
        ports: tuple[int, int] | None = None,
        smoke_messages: list[dict[str, str]] | None = None,
        smoke_max_tokens: int = 16,
        drain_s: float = 2.0,
    ) -> None:
        self.state_file = Path(state_file)
        self.server_cfg = server_cfg or VLLMServerConfig()
        self.fixed_ports = ports
        self.smoke_messages = smoke_messages or DEFAULT_SMOKE
        self.smoke_max_tokens = smoke_max_tokens
        self.drain_s = drain_s
        self._servers: dict[int, VLLMServer] = {}  # children of this process, to reap them

    # state file -------------------------------------------------------------------------
    def _read(self) -> _State:
        if not self.state_file.exists():
            return _State()
        return _State.model_validate_json(self.state_file.read_text())

    def _write(self, state: _State) -> None:
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state.model_dump(mode="json"), indent=2))
        os.replace(tmp, self.state_file)  # readers never see a half-written file

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise writers (two deploys at once would race for the idle port)."""
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.state_file.with_suffix(".lock"), "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    # queries -----------------------------------------------------------------------------
    def current(self, name: str = "default") -> Deployment | None:
        """The live deployment for ``name`` (None if absent or its process is gone)."""
        dep = self._read().deployments.get(name)
        return dep if dep is not None and is_vllm_server(dep.pid) else None

    def list(self) -> list[Deployment]:
        """Recorded deployments whose server process is still running."""
        return [d for d in self._read().deployments.values() if is_vllm_server(d.pid)]

    # actions -----------------------------------------------------------------------------
    def _pick_port(self, state: _State, name: str, old: Deployment | None) -> tuple[Color, int]:
        host = self.server_cfg.host
        pair = self.fixed_ports or state.ports.get(name)
        if pair is None:
            pair = (find_free_port(host), find_free_port(host))
        color: Color = "green" if old is not None and old.color == "blue" else "blue"
        port = pair[0] if color == "blue" else pair[1]
        if not port_free(host, port):
            if self.fixed_ports:
                raise DeployError(f"{color} port {port} for {name!r} is in use")
            port = find_free_port(host)  # something else took it since last time
            pair = (port, pair[1]) if color == "blue" else (pair[0], port)
        state.ports[name] = pair
        return color, port

    def _smoke(self, server: VLLMServer) -> tuple[float, int]:
        from openai import OpenAI

        client = OpenAI(base_url=f"{server.base_url}/v1", api_key="EMPTY", max_retries=0, timeout=120)
        t0 = time.perf_counter()
        resp = client.chat.completions.create(
            model=server.served_model_name,
            messages=self.smoke_messages,  # type: ignore[arg-type]
            max_tokens=self.smoke_max_tokens,
            temperature=0.0,
        )
        latency = time.perf_counter() - t0
        tokens = resp.usage.completion_tokens if resp.usage else 0
        if not resp.choices:
            raise DeployError("smoke completion returned no choices")
        return latency, tokens

    def deploy(self, model_dir: str | Path, model_version: str, name: str = "default") -> Deployment:
        """Start ``model_dir`` on the idle port, verify it, switch to it, stop the old server."""
        with self._locked():
            state = self._read()
            old = state.deployments.get(name)
            if old is not None and not is_vllm_server(old.pid):
                old = None
            color, port = self._pick_port(state, name, old)
            served = self.server_cfg.served_model_name or name
            cfg = self.server_cfg.model_copy(
                update={
                    "port": port,
                    "served_model_name": served,
                    "extra_served_names": [f"{served}:{model_version}"],
                    "log_dir": self.server_cfg.log_dir or self.state_file.parent / "logs",
                }
            )
            try:
                server, startup_s, latency, tokens = self._start_verified(model_dir, cfg)
            except Exception as exc:
                serving = f"{old.model_version} still serving on {old.endpoint}" if old else "nothing serving"
                raise DeployError(f"deploy of {name}:{model_version} failed ({serving}): {exc}") from exc
            self._servers[server.proc.pid] = server  # type: ignore[union-attr]
            dep = Deployment(
                name=name,
                endpoint=f"{server.base_url}/v1",
                port=port,
                pid=server.proc.pid,  # type: ignore[union-attr]
                color=color,
                model_version=model_version,
                model_dir=str(Path(model_dir).resolve()),
                served_model_name=served,
                started_at=datetime.now(UTC).isoformat(timespec="seconds"),
                log_path=str(server.log_path),
                startup_s=round(startup_s, 3),
                smoke_latency_s=round(latency, 4),
                smoke_completion_tokens=tokens,
                smoke_tokens_per_s=round(tokens / latency, 2) if latency > 0 else 0.0,
            )
            # Switch first, then drain: clients that read the old endpoint a moment ago
            # still get their answer before the old server goes away.
            state.deployments[name] = dep
            self._write(state)
            if old is not None:
                time.sleep(self.drain_s)
                self._stop_pid(old.pid)
            return dep

    def _start_verified(self, model_dir: str | Path, cfg: VLLMServerConfig,
                        attempts: int = 2) -> tuple[VLLMServer, float, float, int]:
        """Start a server, wait for health and smoke-test it; a stalled start (``StartupStalled``)
        is tried once more. Returns the server, its startup seconds and the smoke's latency and
        tokens; on failure the server is stopped and the error raised."""
        for attempt in range(1, attempts + 1):
            server = VLLMServer(model_dir, cfg)
            try:
                server.start()
                startup_s = server.wait_healthy()
                latency, tokens = self._smoke(server)
                return server, startup_s, latency, tokens
            except StartupStalled:
                server.stop()
                if attempt == attempts:
                    raise
            except Exception:
                server.stop()
                raise
        raise AssertionError("unreachable")

    def _stop_pid(self, pid: int) -> None:
        server = self._servers.pop(pid, None)
        if server is not None:
            server.stop()
        elif is_vllm_server(pid):
            stop_process_group(pid)

    def stop(self, name: str = "default") -> Deployment | None:
        """Stop and forget the deployment ``name``; returns what was stopped."""
        with self._locked():
            state = self._read()
            dep = state.deployments.pop(name, None)
            if dep is not None:
                self._stop_pid(dep.pid)
            self._write(state)
            return dep

    def stop_all(self) -> None:
        for dep in self._read().deployments.values():
            self.stop(dep.name)
